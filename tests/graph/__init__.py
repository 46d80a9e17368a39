"""Tests of torchinn.graph (one file per module).

A package, so its test files may share basenames with the ones in tests/ (pytest imports them
as ``graph.test_x``); tests/conftest.py and tests/zoo.py are still found as before.
"""
