"""Use the distilled student: merge its adapter into the base model, convert the merged model to
GGUF, publish both with a model card under ``models/<student>/<version>/`` in the store, and serve
the GGUF behind an OpenAI-compatible endpoint (llama.cpp's server, as the embedded teacher).

``python -m kdflow export`` and ``python -m kdflow serve`` (:mod:`kdflow.export.cli`); the
``kdflow_export`` DAG runs the same :func:`kdflow.export.publish.export_model`."""
