"""modelwire's benchmarks: ``python -m bench`` runs the suite (see ``bench/__main__.py`` and
docs/performance.md); the ``bench_*.py`` scripts beside it are the single-topic benchmarks whose
measurement code the suite reuses, each still runnable on its own."""
