"""benchmarks/compress_lm.py on its quick setting: every method runs on the shipped Llama at one
level, at one shared size, and compress hands back a LlamaForCausalLM."""

from __future__ import annotations

import math

import pytest

pytest.importorskip("transformers")

from benchmarks import compress_lm  # noqa: E402

pytestmark = pytest.mark.usefixtures("single_thread")


def test_quick_run_compares_every_method_at_one_size():
    res = compress_lm.main(["--quick", "--levels", "0.5"])
    assert res["original"] == pytest.approx(2.777, abs=0.01)  # 8 held-out windows of the shipped model
    (row,) = res["levels"]
    assert row["params"] <= 0.5 * res["params"] * 1.001
    for key in ("inn", "compress_0s", "compress", "l1", "random", "activation", "l1_ft", "random_ft", "activation_ft"):
        assert math.isfinite(row[key]) and row[key] >= 1.0, key
    assert row["compress_class"] == row["compress_0s_class"] == "LlamaForCausalLM"
    # the best start is never worse than the INN resampled (one of its candidates; equal when it
    # wins, up to the float noise of measuring it through another module)
    assert row["compress_0s"] <= row["inn"] * (1 + 1e-4)
    assert "| 50% | 50.0% |" in compress_lm.format_table(res)
