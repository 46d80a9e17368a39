"""The benchmarks: scripts run as ``python benchmarks/NAME.py``; a package so that the tests can
import them (``from benchmarks import compress_digits``; pytest puts the repo root on ``sys.path``
through ``pythonpath`` in pyproject.toml). Their shared code is in :mod:`torchinn_demo.harness`."""
