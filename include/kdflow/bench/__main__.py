"""``python -m kdflow.bench``: the benchmark of the whole pipeline and each stage (``make bench``)."""

from kdflow.bench.pipeline import main

raise SystemExit(main())
