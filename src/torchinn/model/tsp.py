"""Shortest open paths through a distance matrix: the TSP solvers behind the channel permutation.

:mod:`torchinn.model.permute` turns a channel group into a symmetric distance matrix ``D`` whose path
lengths are total variations; this module finds a short open Hamiltonian path through ``D``.
:func:`solve_path` gives the exact optimum for tiny groups (Held-Karp), otherwise the solver
named by ``solver``: the deterministic 2-opt + Or-opt local search ``"local"`` (default,
bit-reproducible) or ``"fast_tsp"``; more can be added with :func:`register_solver`.
:func:`greedy_path` is the nearest-neighbour baseline and :func:`path_length` measures an order.

``fast_tsp`` (MIT) reads ``uint16`` distances and runs an Or-opt/Lin-Kernighan search for a
wall-clock budget. Its random generator (the Rust ``fastrand`` crate's global one) seeds itself
and cannot be set from Python: two runs on the same matrix usually return different orders
(measured from 64 channels up; small groups sometimes agree), and with a time budget the amount
of search also depends on the machine's load, so no wrapper can make it reproducible. Hence
``solver="local"`` is the default and ``solver="fast_tsp"`` is opt-in: it finds paths up to
0.7 % shorter (``benchmarks/RESULTS.md``).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence

import numpy as np
import torch
from torch import Tensor

from .local_search import LocalSearch

__all__ = [
    "SOLVERS",
    "register_solver",
    "check_solver",
    "path_length",
    "greedy_path",
    "solve_path",
    "default_time_limit",
]

log = logging.getLogger(__name__)

Solver = str
"""A solver's name in :data:`SOLVERS` (``"local"``, ``"fast_tsp"``, or one registered)."""

SolverFn = Callable[[np.ndarray, int, "float | None"], np.ndarray]

SOLVERS: dict[str, SolverFn] = {}
"""name -> ``solve(D, seed, time_limit) -> path``, see :func:`register_solver`."""


def register_solver(name: str, *, override: bool = False) -> Callable[[SolverFn], SolverFn]:
    """Decorator: make ``solve(D, seed, time_limit)`` available as ``solver=name`` (in
    :func:`solve_path`, :func:`torchinn.model.permute.order_channels` and ``ConvertConfig.tsp_solver``).

    ``D`` is a symmetric float64 NumPy matrix of more than 10 rows (smaller groups are solved
    exactly), ``seed`` an int, ``time_limit`` seconds or None (the solver's default). ``solve``
    returns an order of ``range(len(D))`` as an int64 array; :func:`solve_path` orients it and
    keeps the identity unless the order is strictly shorter. A name already taken is an error
    unless ``override=True``.
    """
    if not isinstance(name, str) or not name:
        raise TypeError(f"a solver name must be a non-empty str, got {name!r}")
    if name in SOLVERS and not override:
        raise ValueError(f"a TSP solver named {name!r} is already registered; pass override=True "
                         "to replace it")

    def deco(fn: SolverFn) -> SolverFn:
        if not callable(fn):
            raise TypeError(f"register_solver decorates a function (D, seed, time_limit) -> path, got {fn!r}")
        SOLVERS[name] = fn
        return fn

    return deco


def check_solver(solver: object, what: str = "solver") -> None:
    """Raise ``ValueError`` unless ``solver`` names a registered solver."""
    if not isinstance(solver, str) or solver not in SOLVERS:
        raise ValueError(f"{what} must be one of the registered TSP solvers {sorted(SOLVERS)}, got {solver!r} "
                         "(add one with torchinn.model.tsp.register_solver)")

EXACT_MAX = 10
"""Groups of at most this many channels are solved exactly (Held-Karp dynamic programming)."""

_UINT16_MAX = 65535


# ---------------------------------------------------------------------------------------------
# paths
# ---------------------------------------------------------------------------------------------
def path_length(D: Tensor, perm: Tensor | Sequence[int]) -> float:
    """Length of the open path visiting the channels in order ``perm``: ``sum D[p_i, p_i+1]``.

    With ``D = distance_matrix(members)`` (:mod:`torchinn.model.permute`) this is the total variation
    of the permuted members.
    """
    p = torch.as_tensor(perm, dtype=torch.long, device=D.device)
    if p.numel() < 2:
        return 0.0
    return float(D[p[:-1], p[1:]].to(torch.float64).sum())


def _check_square(D: Tensor) -> int:
    if D.dim() != 2 or D.shape[0] != D.shape[1]:
        raise ValueError(f"distance matrix must be square (n, n), got shape {tuple(D.shape)}")
    return D.shape[0]


def _greedy(D: np.ndarray, start: int) -> np.ndarray:
    n = len(D)
    visited = np.zeros(n, dtype=bool)
    path = np.empty(n, dtype=np.int64)
    cur = start
    for k in range(n):
        path[k] = cur
        visited[cur] = True
        if k + 1 < n:
            row = np.where(visited, np.inf, D[cur])
            cur = int(np.argmin(row))  # ties: the lowest index
    return path


def greedy_path(D: Tensor, start: int = 0) -> Tensor:
    """Nearest-neighbour path: from ``start``, always go to the closest unvisited channel.

    A baseline (ties go to the lowest index). Returns a ``LongTensor`` on ``D``'s device.

    >>> x = torch.tensor([0.0, 5.0, 1.0, 4.0], dtype=torch.float64)  # 4 channels, 1 value each
    >>> D = (x[:, None] - x).abs()  # their L1 distances, as distance_matrix([(x, 0)]) gives
    >>> greedy_path(D).tolist()
    [0, 2, 3, 1]
    """
    n = _check_square(D)
    if n == 0:
        return torch.empty(0, dtype=torch.long, device=D.device)
    if not 0 <= start < n:
        raise ValueError(f"start must be in [0, {n - 1}], got {start}")
    d = D.detach().to(torch.float64).cpu().numpy()
    return torch.from_numpy(_greedy(d, start)).to(D.device)


def _exact(D: np.ndarray) -> np.ndarray:
    """Shortest Hamiltonian path by Held-Karp dynamic programming, O(2^n n^2); n <= ~12."""
    n = len(D)
    full = 1 << n
    bits = 1 << np.arange(n)
    dp = np.full((full, n), np.inf)
    parent = np.full((full, n), -1, dtype=np.int64)
    dp[bits, np.arange(n)] = 0.0
    DT = D.T  # DT[j, i] = D[i, j]
    for mask in range(1, full):
        inside = (mask & bits) != 0
        if inside.sum() < 2:
            continue
        js = np.nonzero(inside)[0]
        prev = dp[mask ^ bits[js]]  # (len(js), n): paths over mask minus j, ending at i
        cand = prev + DT[js]  # ... then i -> j
        best = np.argmin(cand, axis=1)
        dp[mask, js] = cand[np.arange(len(js)), best]
        parent[mask, js] = best
    mask, last = full - 1, int(np.argmin(dp[full - 1]))
    path = []
    while last >= 0:
        path.append(last)
        mask, last = mask ^ (1 << last), int(parent[mask, last])
    return np.array(path[::-1], dtype=np.int64)


def _local(D: np.ndarray, seed: int, deadline: float | None) -> tuple[np.ndarray, bool]:
    """Deterministic: the nearest-neighbour path from a start node drawn with ``seed``,
    improved by local search. (More starts were measured: no shorter paths on average.)"""
    start = int(torch.randint(len(D), (1,), generator=torch.Generator().manual_seed(seed)))
    search = LocalSearch(D, deadline=deadline)
    return search.run(_greedy(D, start)), search.timed_out


@register_solver("local")
def _local_solver(D: np.ndarray, seed: int, time_limit: float | None) -> np.ndarray:
    deadline = None if time_limit is None else time.perf_counter() + time_limit
    path, timed_out = _local(D, seed, deadline)
    if timed_out:
        log.warning("local TSP search on %d channels stopped at its time limit (%.3g s); "
                    "the order depends on timing and may differ between runs", len(D), time_limit)
    return path


def _integer_matrix(D: np.ndarray) -> np.ndarray:
    """``D`` as fast_tsp needs it: integers in [0, 65535], plus a dummy node for open paths.

    Every off-diagonal entry has the smallest one subtracted, then the rest is stretched to the
    full ``uint16`` range: an open path has n - 1 edges, so the shift changes every path by the
    same amount and the resolution goes where the distances differ (high-dimensional L1
    distances concentrate around their mean). The dummy is at distance 0 from every node; the
    shortest tour through it, cut there, is the shortest open path. Rounding costs at most
    ``0.5 * (max - min) / 65535`` per edge.
    """
    n = len(D)
    off = ~np.eye(n, dtype=bool)
    lo, hi = float(D[off].min()), float(D[off].max())
    scale = _UINT16_MAX / (hi - lo) if hi > lo else 0.0
    S = np.zeros((n + 1, n + 1), dtype=np.int64)
    S[:n, :n] = np.rint((D - lo) * scale).clip(0, _UINT16_MAX)
    np.fill_diagonal(S, 0)
    S = np.minimum(S, S.T)  # exactly symmetric whatever D's rounding
    return S


@register_solver("fast_tsp")
def _fast_tsp(D: np.ndarray, seed: int, time_limit: float | None) -> np.ndarray:
    """No seed: the package seeds itself (see the module docstring)."""
    try:
        import fast_tsp
    except ImportError as e:
        raise ImportError("solver='fast_tsp' needs the fast-tsp package (pip install fast-tsp); "
                          "solver='local' needs nothing more") from e

    n = len(D)
    if time_limit is None:
        time_limit = default_time_limit(n)
    tour = fast_tsp.find_tour(_integer_matrix(D), duration_seconds=max(time_limit, 1e-3))
    k = tour.index(n)
    return np.array(tour[k + 1:] + tour[:k], dtype=np.int64)


def _checked_path(path: object, n: int, solver: str) -> np.ndarray:
    """A solver's answer as an int64 array, if it is an order of ``range(n)``."""
    p = np.asarray(path)
    if p.shape != (n,) or not np.issubdtype(p.dtype, np.integer) or not np.array_equal(np.sort(p), np.arange(n)):
        raise ValueError(f"TSP solver {solver!r} must return an order of the {n} channels (a permutation "
                         f"of 0..{n - 1}), got shape {p.shape} and dtype {p.dtype}")
    return p.astype(np.int64)


def default_time_limit(n: int) -> float:
    """Seconds of search for a group of ``n`` channels: ``0.5 ms`` per channel, in [0.05, 1].

    A ResNet-50 has about 40 groups of 64..2048 channels (about 11,500 in all): about 6 s.
    """
    return min(1.0, max(0.05, 5e-4 * n))


def solve_path(D: Tensor, *, seed: int = 0, time_limit: float | None = None,
               solver: Solver = "local") -> Tensor:
    """A short open Hamiltonian path through the distance matrix ``D``: a ``LongTensor`` order.

    * ``n <= 10``: the exact optimum (Held-Karp), whatever ``solver`` says.
    * ``solver="local"`` (default): the nearest-neighbour path from a start node drawn with
      ``seed``, improved by 2-opt and Or-opt moves to a local optimum; the same ``D`` and
      ``seed`` give the same order on every run. (Across machines, ``distance_matrix``'s last
      bits may follow the CPU's vector width, and near-ties can then go the other way.) ``time_limit`` is only a safety
      cap here (0.8 s are enough for 2048 channels; if the cap stops the search, a warning says
      that the result depends on timing).
    * ``solver="fast_tsp"``: the ``fast_tsp`` package's iterated local search for ``time_limit``
      seconds (default :func:`default_time_limit`). Shorter paths, but it has no seed: results
      differ from run to run (and ``seed`` is not used).
    * any other name added with :func:`register_solver`.

    The path is oriented so that its first node is smaller than its last. The identity order is
    returned unless the path found is strictly shorter, so the result is never longer.

    >>> x = torch.tensor([0.0, 5.0, 1.0, 4.0, 2.0], dtype=torch.float64)
    >>> D = (x[:, None] - x).abs()
    >>> solve_path(D).tolist()
    [0, 2, 4, 3, 1]
    """
    n = _check_square(D)
    check_solver(solver)
    if time_limit is not None and not time_limit > 0:
        raise ValueError(f"time_limit must be > 0 seconds or None, got {time_limit}")
    identity = torch.arange(n, device=D.device)
    if n <= 2:
        return identity
    d = D.detach().to(torch.float64).cpu().numpy()
    if not np.isfinite(d).all():
        raise ValueError("distance matrix has non-finite entries (nan or inf)")
    asym = float(np.abs(d - d.T).max())
    if asym > 1e-9 * float(np.abs(d).max()):
        raise ValueError(f"distance matrix must be symmetric; |D - D.T| is up to {asym:.3g}")
    if n <= EXACT_MAX:
        path = _exact(d)
    else:
        path = _checked_path(SOLVERS[solver](d, seed, time_limit), n, solver)
    if path[0] > path[-1]:
        path = path[::-1].copy()
    length = float(d[path[:-1], path[1:]].sum())
    if not length < float(np.trace(d, offset=1)):
        return identity
    return torch.from_numpy(path).to(D.device)

