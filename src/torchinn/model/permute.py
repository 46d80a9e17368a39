"""Channel permutation: order a group's channels so that its weights are smooth (Algorithm 1).

A channel *group* is a set of tensors that all carry the group's ``n`` channels along one dimension
each: a conv's filters (dim 0) and bias, the next conv's input slices (dim 1), batch-norm vectors...
One permutation must reorder all of them, so the network computes exactly the same function.

The permutation that makes the weights smoothest along the channel axis minimises their *total
variation*, the sum of ``|T[i+1] - T[i]|`` along that axis. With ``D[i, j]`` the L1 distance
between channel ``i`` and channel ``j`` (summed over the group's tensors), the total variation of
an order is the length of the corresponding path, so the best order is the shortest Hamiltonian
*path* through ``D``: an open travelling-salesman problem.

* :func:`total_variation` and :func:`distance_matrix` measure a group;
* :func:`solve_path` (in :mod:`torchinn.model.tsp`, re-exported here with :func:`greedy_path`,
  :func:`path_length` and :func:`default_time_limit`) finds a short path: the exact optimum for
  tiny groups, otherwise a deterministic 2-opt + Or-opt local search (default,
  bit-reproducible), or the ``fast_tsp`` solver (better paths in the same time, but not
  reproducible: it has no seed, see :mod:`torchinn.model.tsp`), or one added with
  :func:`torchinn.model.tsp.register_solver`;
* :func:`order_channels` does both for one group; :func:`apply_permutation` applies the result.

Every result is at least as good as the identity order: the total variation never increases.

>>> x = torch.tensor([[3.0], [0.0], [2.0], [1.0]])      # 4 channels, 1 value each
>>> total_variation([(x, 0)])
6.0
>>> perm = order_channels([(x, 0)])
>>> perm.tolist()
[0, 2, 3, 1]
>>> (y,) = apply_permutation([(x, 0)], perm)
>>> y.flatten().tolist(), total_variation([(y, 0)])
([3.0, 2.0, 1.0, 0.0], 3.0)
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from .tsp import Solver, default_time_limit, greedy_path, path_length, solve_path

__all__ = [
    "Member",
    "total_variation",
    "distance_matrix",
    "path_length",
    "greedy_path",
    "solve_path",
    "default_time_limit",
    "order_channels",
    "apply_permutation",
]

Member = tuple[Tensor, int]
"""A tensor and the dimension along which it carries the group's channels."""


# ---------------------------------------------------------------------------------------------
# measuring a group
# ---------------------------------------------------------------------------------------------
def _check_members(members: Sequence[Member]) -> int:
    """Validate ``members`` and return the number of channels they share."""
    if len(members) == 0:
        raise ValueError("a channel group needs at least one (tensor, dim) member, got none")
    sizes = []
    for k, member in enumerate(members):
        if not (isinstance(member, tuple) and len(member) == 2 and isinstance(member[0], Tensor)):
            raise TypeError(f"member {k} must be a (Tensor, dim) tuple, got {type(member).__name__}")
        t, dim = member
        if t.dim() == 0 or not -t.dim() <= dim < t.dim():
            raise ValueError(f"member {k} has shape {tuple(t.shape)}; dim must be in "
                             f"[{-t.dim()}, {t.dim() - 1}], got {dim}")
        size = t.shape[dim]
        if sizes and size != sizes[0]:
            raise ValueError(f"member {k} has {size} channels along dim {dim} "
                             f"(shape {tuple(t.shape)}), but member 0 has {sizes[0]}")
        sizes.append(size)
    return sizes[0]


def _rows(members: Sequence[Member], dtype: torch.dtype | None = None) -> Tensor:
    """All members side by side: row ``i`` holds every value of channel ``i``, shape ``(n, K)``."""
    n = _check_members(members)
    if dtype is None:  # at least float32; float64 if any member is
        dtype = torch.float32
        for t, _ in members:
            dtype = torch.promote_types(dtype, t.dtype)
    parts = [t.detach().movedim(d, 0).reshape(n, -1).to(dtype) for t, d in members]
    return torch.cat(parts, dim=1)


def total_variation(members: Sequence[Member]) -> float:
    """Total variation of a group along its channel axis, on the raw values.

    ``sum over members of sum |T[i+1] - T[i]|``, differences taken along each member's channel
    dimension over all its other entries; summed in float64.

    >>> total_variation([(torch.tensor([0.0, 2.0, 1.0]), 0), (torch.ones(2, 3), 1)])
    3.0
    """
    _check_members(members)
    total = 0.0
    for t, d in members:
        # differences in the tensor's dtype (exact to its rounding), summed in float64
        total += float(t.detach().diff(dim=d).abs_().sum(dtype=torch.float64))
    return total


_BLOCK = 1024
"""Columns per ``pdist`` call: fits the cache better than all columns at once (measured faster)."""


def distance_matrix(members: Sequence[Member]) -> Tensor:
    """Pairwise L1 distances between channels, summed over the group: a float64 ``(n, n)`` tensor.

    ``D[i, j] = sum over members of sum |T[i] - T[j]|`` (slices along each member's channel
    dim), so the length of a path through ``D`` is the total variation of the group permuted in
    that order. Values are used raw (not rescaled per member): that is what total variation is.

    Computed with ``torch.nn.functional.pdist(p=1)`` (each pair once, vectorised, all threads)
    on blocks of 1024 values per channel, in the members' dtype (at least float32), and the
    blocks summed in float64: within ~1e-7 of exact float64, on the members' device. On 2 CPU
    cores this is 3-11x faster than SciPy's ``cityblock`` and 10-25x faster than
    ``torch.cdist(p=1)`` (``benchmarks/RESULTS.md``).

    >>> distance_matrix([(torch.tensor([0.0, 1.0, 3.0]), 0)])
    tensor([[0., 1., 3.],
            [1., 0., 2.],
            [3., 2., 0.]], dtype=torch.float64)
    """
    return _pairwise(_rows(members))


def _pairwise(x: Tensor) -> Tensor:
    """:func:`distance_matrix` of the rows of ``x`` (``(n, K)``)."""
    n, k = x.shape
    pairs = torch.zeros(n * (n - 1) // 2, dtype=torch.float64, device=x.device)
    with torch.no_grad():
        for start in range(0, k, _BLOCK):
            pairs += F.pdist(x[:, start:start + _BLOCK].contiguous(), p=1)
    return _square(pairs, n)


_ROWS = 256
"""Rows per block when :func:`_square` mirrors the upper triangle."""


def _square(pairs: Tensor, n: int) -> Tensor:
    """The symmetric ``(n, n)`` matrix of ``pdist``'s condensed pairs (row by row of the upper
    triangle), filled by slices: no index tensors (``triu_indices`` took twice the matrix's
    bytes, 0.5 GB for 8192 channels, at the peak of a Llama's conversion)."""
    out = torch.zeros(n, n, dtype=pairs.dtype, device=pairs.device)
    at = 0
    for i in range(n - 1):
        out[i, i + 1:] = pairs[at:at + n - 1 - i]
        at += n - 1 - i
    for r in range(0, n, _ROWS):
        e = min(n, r + _ROWS)
        out[r:e, :r] = out[:r, r:e].T
        diagonal = out[r:e, r:e]
        diagonal += diagonal.T.clone()
    return out


MAX_DISTANCE_WORK = 10_000_000_000
"""Cap on ``n (n - 1) / 2 x values per channel`` for one group's exact distance matrix (about 5 s
on 2 cores). A ResNet-50's or ViT-B's largest groups are under it (2048 channels x 4585 values:
9.6e9). Above it (a 1 B Llama's MLP group: 8192 channels x 6144 values, 2.1e11, about 100 s),
:func:`order_channels` estimates the distances on a seeded sample of the values (the same
sample for every pair, so the estimate is unbiased up to one scale) and, with the default
``solver="local"`` and no ``time_limit``, takes the nearest-neighbour path (the local search
would run for minutes on thousands of channels; on 2048 channels it gains 0.1-1 % over it,
benchmarks/RESULTS.md)."""


# ---------------------------------------------------------------------------------------------
# one group
# ---------------------------------------------------------------------------------------------
def order_channels(members: Sequence[Member], *, seed: int = 0, time_limit: float | None = None,
                   solver: Solver = "local") -> Tensor:
    """The order of a group's channels that (nearly) minimises its total variation.

    :func:`distance_matrix` then :func:`solve_path`; see there for ``seed``, ``time_limit``
    and ``solver``; groups above :data:`MAX_DISTANCE_WORK` are estimated (see there). The total variation of ``apply_permutation(members, order)`` is never larger
    than that of ``members``. Returns a ``LongTensor`` on the members' device.
    """
    x = _rows(members)
    n, k = x.shape
    if n * (n - 1) // 2 * k <= MAX_DISTANCE_WORK:
        D = _pairwise(x)
        del x  # the group's values side by side: freed before the search
        return solve_path(D, seed=seed, time_limit=time_limit, solver=solver)
    # a huge group: distances on a seeded sample of the values, and the nearest-neighbour path
    keep = max(1, MAX_DISTANCE_WORK // (n * (n - 1) // 2))
    cols = torch.randperm(k, generator=torch.Generator().manual_seed(seed))[:keep].sort().values
    x = x[:, cols.to(x.device)]
    D = _pairwise(x)
    del x
    if solver != "local" or time_limit is not None:
        return solve_path(D, seed=seed, time_limit=time_limit, solver=solver)
    start = int(torch.randint(n, (1,), generator=torch.Generator().manual_seed(seed)))
    path = greedy_path(D, start)
    identity = torch.arange(n, device=D.device)
    return path if path_length(D, path) < path_length(D, identity) else identity


def apply_permutation(members: Sequence[Member], perm: Tensor) -> list[Tensor]:
    """New tensors: each member reordered by ``perm`` along its channel dim (``index_select``).

    The inputs are not modified.

    >>> apply_permutation([(torch.arange(6.0).view(2, 3), 1)], torch.tensor([2, 0, 1]))
    [tensor([[2., 0., 1.],
            [5., 3., 4.]])]
    """
    n = _check_members(members)
    perm = torch.as_tensor(perm)
    if perm.dim() != 1 or perm.numel() != n or perm.is_floating_point():
        raise ValueError(f"perm must be a 1-D integer tensor of length {n}, got shape "
                         f"{tuple(perm.shape)} and dtype {perm.dtype}")
    p = perm.cpu().long()
    if n and not (0 <= int(p.min()) and int(p.max()) < n and int(p.unique().numel()) == n):
        raise ValueError(f"perm is not a permutation of 0..{n - 1}: {perm.tolist()[:20]}")
    return [t.index_select(d, perm.to(device=t.device, dtype=torch.long)) for t, d in members]
