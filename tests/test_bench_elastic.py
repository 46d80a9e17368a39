"""benchmarks/elastic.py --plot: the recorded runs (benchmarks/elastic_runs/) drawn as the
README's figures."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("matplotlib")

from benchmarks import elastic  # noqa: E402

RUNS = Path(__file__).resolve().parents[1] / "benchmarks" / "elastic_runs"


@pytest.mark.parametrize("name", ["waifu2x_photo_300s", "mnist_cnn_300s"])
def test_plot_of_a_recorded_run(tmp_path, name):
    png = tmp_path / f"{name}.png"
    res = elastic.main(["--plot", str(RUNS / f"{name}.json"), str(png)])
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
    # the recorded numbers are the ones RESULTS.md gives: compress per size is above the elastic
    # network at every size below full
    for t, cell in res["compress"]["60"].items():
        assert cell["quality"] >= res["elastic"][t]["quality"], t

