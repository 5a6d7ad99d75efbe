"""Benchmarks, apart from the library they measure (nothing in kdflow imports this package).

    python -m kdflow.bench                  # the whole pipeline and each stage (``make bench``): bench/pipeline.py
    python -m kdflow.bench.learning ...     # what the student learns, recipe by recipe: bench/learning.py

``bench/airflow.py`` (the DAG under Airflow) and ``bench/teacher.py`` (the embedded teacher's server
pool) are sections of ``python -m kdflow.bench``.
"""
