# Sourced by build-llama-cpp.sh and fetch-llama-convert.sh: the llama.cpp source vendored in the
# pinned llama-cpp-python sdist (one llama.cpp for the teacher server, the GGUF converter and the
# llama-cpp-python bindings). Sets $work (a temporary folder removed on exit) and $LLAMA_SRC.
LLAMA_CPP_VERSION=${LLAMA_CPP_VERSION:-0.3.36}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
"$PYTHON" -m pip download -q --no-deps --no-binary :all: -d "$work" "llama-cpp-python==$LLAMA_CPP_VERSION"
tar xzf "$work/llama_cpp_python-$LLAMA_CPP_VERSION.tar.gz" -C "$work"
LLAMA_SRC="$work/llama_cpp_python-$LLAMA_CPP_VERSION/vendor/llama.cpp"
