"""The sizes each step of elastic training visits, for :func:`torchinn.sandwich_backward`:
:class:`NestedSizes` (random ranked sizes between ``low`` and full) and :class:`DeployedSizes`
(the full size and the deployed sizes, each with its own partitions).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping

from ..training.sizes import RandomSizes
from .network import ElasticNetwork

__all__ = ["DeployedSizes", "NestedSizes"]


class NestedSizes:
    """The sizes of elastic training, for :func:`torchinn.sandwich_backward`: like
    :class:`~torchinn.RandomSizes` (whose draws it uses: one size per group in ``[ceil(low * n),
    n]``), but each size is set as the elastic network's partition (:meth:`ElasticNetwork.partition`)."""

    def __init__(self, elastic: ElasticNetwork, low: float, seed: int = 0) -> None:
        self.elastic = elastic
        full = {n: p for n, p in elastic._uniform.items() if n in elastic._elastic}
        self.random = RandomSizes(full, low=low, seed=seed)

    def _set(self, sizes: Mapping[str, int]) -> dict[str, int]:
        self.elastic.set_sizes(sizes)
        return dict(sizes)

    def step(self) -> dict[str, int]:
        return self._set({n: self.random.draw(p, n) for n, p in sorted(self.random.partitions.items())})

    def largest(self) -> dict[str, int]:
        return self._set({n: p.max_size for n, p in self.random.partitions.items()})

    def smallest(self) -> dict[str, int]:
        return self._set({n: self.random.bounds(p, n)[0] for n, p in self.random.partitions.items()})

    def full(self) -> None:
        self.largest()

    def sandwich(self, random: int = 2) -> Iterator[dict[str, int]]:
        """Full size, the smallest, then ``random`` draws (as :meth:`RandomSizes.sandwich`)."""
        yield self.largest()
        yield self.smallest()
        for _ in range(random):
            yield self.step()


class DeployedSizes:
    """The sizes of elastic training with deployed sizes (:meth:`ElasticNetwork.deploy`), for
    :func:`torchinn.sandwich_backward`: the full size, then ``random`` (at least one) of the
    deployed sizes in turn, each with its own partitions (``full=False``: without the full size,
    when the shared weights do not train)."""

    def __init__(self, elastic: ElasticNetwork, seed: int = 0, full: bool = True) -> None:
        if not elastic.deployed:
            raise ValueError("DeployedSizes needs an elastic network with deployed sizes (ElasticNetwork.deploy)")
        self.elastic, self.targets, self.turn, self.with_full = elastic, sorted(elastic.deployed), seed, full

    def largest(self) -> dict[str, int]:
        full = {n: self.elastic.groups[n].max_size for n in self.elastic.elastic_groups}
        self.elastic.set_sizes(full)
        return full

    def full(self) -> None:
        self.largest()

    def sandwich(self, random: int = 2) -> Iterator[dict[str, int]]:
        if self.with_full:
            yield self.largest()
        for _ in range(max(1, random)):
            target = self.targets[self.turn % len(self.targets)]
            self.turn += 1
            yield self.elastic.resize(target=target)
