"""Adjust the private copy of a model that is traced, so that models built for generation trace
at their default settings.

Hugging Face causal LMs default to ``use_cache=True``: their forward returns a key/value cache
object (``DynamicCache``) that ``torch.export`` cannot put in a graph output, and whose tensors
would be network outputs (pinned at full size, so no attention head could be removed). The cache
is an inference shortcut for generation, not part of the function: the logits are the same
without it. So the traced copy runs with ``use_cache=False`` (in every ``config`` that has the
field), and the integral model returns the same output class with no cache in it
(``past_key_values=None``). Nothing here imports ``transformers``; the model passed by the user
is never changed (only the copy that :func:`~torchinn.graph.trace.trace` makes is).

Why not register the cache classes as pytrees instead: their layout changes between
``transformers`` releases (a list of layers since 4.56), a global registration changes the
user's process, and a cache output would pin the key/value head dimensions at full size. The
model that comes back (``to_discrete()``) generates with its own cache.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from typing import Any

from torch import nn

__all__ = ["prepare", "caches_off"]

log = logging.getLogger(__name__)


def _cache_configs(module: nn.Module) -> list[Any]:
    """Every config object in ``module`` (and its ``text_config`` / ``decoder``) whose
    ``use_cache`` is True."""
    seen: set[int] = set()
    out = []
    for mod in module.modules():
        config = getattr(mod, "config", None)
        if config is None or id(config) in seen:
            continue
        seen.add(id(config))
        for cfg in [config] + [getattr(config, k, None) for k in ("text_config", "decoder")]:
            if getattr(cfg, "use_cache", False) is True:
                out.append(cfg)
    return out


def prepare(module: nn.Module) -> nn.Module:
    """Switch off key/value caches in ``module`` (a copy: it is changed in place) and return it."""
    for cfg in _cache_configs(module):
        cfg.use_cache = False
        log.debug("tracing %s with use_cache=False (a key/value cache is not part of the function)",
                  type(module).__name__)
    return module


@contextlib.contextmanager
def caches_off(module: nn.Module) -> Iterator[nn.Module]:
    """``module`` with its key/value caches switched off for the duration (restored after), to
    compare its outputs with the traced graph's."""
    configs = _cache_configs(module)
    before = [cfg.use_cache for cfg in configs]
    try:
        for cfg in configs:
            cfg.use_cache = False
        yield module
    finally:
        for cfg, was in zip(configs, before):
            cfg.use_cache = was
