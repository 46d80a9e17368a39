"""The channel groups of an :class:`~torchinn.IntegralModel`: sets of tensor dimensions that share one
partition, by name (``"layer1.0.conv1.weight:0"``: the first tensor dimension found in the group).

>>> import torch, torchinn as inn
>>> imodel = inn.convert(torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2)),
...                      (torch.randn(2, 4),))
>>> imodel.groups["0"]                    # the module that produces the group finds it too
Group('0.weight:0', size=8/8, members=3)
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass

from ..maths.partition import Partition
from ..options import unknown_group

__all__ = ["Group", "Groups", "module_key"]


def module_key(name: str) -> str:
    """The ModuleDict key of a tensor or group name (dots are not allowed in keys)."""
    return name.replace(".", "/")


@dataclass
class Group:
    """A set of tensor dimensions that share one partition (one number of channels). ``partition``
    is the model's current one for the group (read from ``partitions`` at each access, so a group
    follows :meth:`~torchinn.IntegralModel.set_partition`)."""

    name: str
    partitions: Mapping[str, Partition]
    members: list[tuple[str, int]]

    @property
    def partition(self) -> Partition:
        return self.partitions[module_key(self.name)]

    @property
    def size(self) -> int:
        return self.partition.size

    @property
    def max_size(self) -> int:
        return self.partition.max_size

    @property
    def modules(self) -> list[str]:
        """Qualified names of the modules whose tensors are in the group."""
        out: list[str] = []
        for tensor, _ in self.members:
            mod = tensor.rsplit(".", 1)[0] if "." in tensor else ""
            if mod not in out:
                out.append(mod)
        return out

    def __repr__(self) -> str:
        return f"Group({self.name!r}, size={self.size}/{self.max_size}, members={len(self.members)})"


class Groups(Mapping[str, Group]):
    """Groups by name (``"layer1.0.conv1.weight:0"``); a module name that produces exactly one
    group (``"layer1.0.conv1"``) finds it too. Unknown names raise ``KeyError`` with suggestions."""

    def __init__(self, groups: list[Group]) -> None:
        self._groups = {g.name: g for g in groups}

    def __getitem__(self, name: str) -> Group:
        if name in self._groups:
            return self._groups[name]
        if isinstance(name, str):
            hits = [g for n, g in self._groups.items() if n.startswith(name + ".") and n.count(":") == 1
                    and n[len(name) + 1:].split(":")[0].count(".") == 0]
            produced = [g for g in hits if not g.name.endswith("'")]
            if len(produced) == 1:
                return produced[0]
            if len(produced) > 1:
                raise KeyError(f"{name!r} matches several groups: {[g.name for g in produced]}")
        raise unknown_group(name, self._groups)

    def __iter__(self) -> Iterator[str]:
        return iter(self._groups)

    def __len__(self) -> int:
        return len(self._groups)

    def __repr__(self) -> str:
        lines = [f"  {n!r}: {g.size}/{g.max_size} channels, {len(g.members)} tensor dims"
                 for n, g in self._groups.items()]
        return "Groups(\n" + "\n".join(lines) + "\n)"
