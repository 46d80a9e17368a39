"""Local search on an open path through a distance matrix: the improvement step of the ``"local"``
TSP solver of :mod:`torchinn.model.tsp`.

Written here because the default solver must be bit-reproducible: ``fast_tsp``, the library
solver offered as the alternative, seeds itself and cannot be made so (see :mod:`.tsp`).
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import numpy as np

__all__ = ["LocalSearch"]


class LocalSearch:
    """2-opt and Or-opt moves on an open path, with neighbour lists and a work queue.

    The open path is a closed tour through an extra *dummy* node at distance 0 from every node,
    kept at position 0; cutting the tour there gives the path. Deterministic: no randomness, the
    moves depend only on the distances and the start path.
    """

    def __init__(self, D: np.ndarray, neighbours: int = 32, deadline: float | None = None):
        n = len(D)
        self.n, self.m, self.dummy = n, n + 1, n
        self.W = np.zeros((n + 1, n + 1))
        self.W[:n, :n] = D
        self.deadline = deadline
        k = min(neighbours, n - 1)
        off = D + np.diag(np.full(n, np.inf))
        nb = np.argpartition(off, k - 1, axis=1)[:, :k] if k < n - 1 else np.argsort(off, 1)[:, :k]
        nb = np.take_along_axis(nb, np.take_along_axis(off, nb, 1).argsort(1, kind="stable"), 1)
        # ascending distance; the dummy (distance 0) first
        self.nb = np.concatenate([np.full((n, 1), self.dummy), nb], axis=1)
        self.everyone = np.arange(n)  # the dummy's candidates
        # Or-opt candidates are laid out as [nb[s0], nb[s1], nb[s0], nb[s1]]: which segment end
        # goes next to c, and whether the other new neighbour is the node after or before c
        kk = self.nb.shape[1]
        self.first_end = np.tile(np.repeat([True, False], kk), 2)
        self.side = np.repeat([1, -1], 2 * kk)
        self.timed_out = False

    def run(self, path: np.ndarray, tol: float = 1e-12, todo: Sequence[int] | None = None) -> np.ndarray:
        """Improve ``path`` until no move helps; ``todo``: the nodes to look at first (all)."""
        m, dummy, W = self.m, self.dummy, self.W
        tour = np.concatenate([[dummy], path]).astype(np.int64)
        pos = np.empty(m, dtype=np.int64)
        pos[tour] = np.arange(m)
        # scale the tolerance with the distances, so float noise never makes a cycle of moves
        tol = tol * max(float(W.max()), 1.0) * m

        def reverse(s: int, e: int) -> None:
            # reverse tour[s..e] (cyclic, inclusive); reversing the complement instead keeps
            # the dummy at position 0 and gives the same tour
            if s > e or s == 0:
                s, e = e + 1, (s - 1 if s > 0 else m - 1)
            if s < e:
                seg = tour[s:e + 1][::-1].copy()
                tour[s:e + 1] = seg
                pos[seg] = np.arange(s, e + 1)

        queue = list(range(m - 1, -1, -1)) if todo is None else [int(x) for x in todo]
        queued = np.zeros(m, dtype=bool)
        queued[queue] = True

        def push(*nodes: int) -> None:
            for x in nodes:
                if not queued[x]:
                    queued[x] = True
                    queue.append(x)

        steps = 0
        while queue:
            steps += 1
            if self.deadline is not None and steps % 64 == 0 and time.perf_counter() > self.deadline:
                self.timed_out = True
                break
            a = queue.pop()
            queued[a] = False
            if self._two_opt(a, tour, pos, reverse, push, tol):
                continue
            if a != dummy:
                self._or_opt(a, tour, pos, push, tol)
        return tour[1:].copy()

    def _two_opt(self, a: int, tour: np.ndarray, pos: np.ndarray, reverse, push, tol: float) -> bool:
        """Best 2-opt move that replaces the edge (a, next/previous of a); True if one was made."""
        m, W = self.m, self.W
        i = int(pos[a])
        cands = self.everyone if a == self.dummy else self.nb[a]
        for step in (1, -1):
            b = int(tour[(i + step) % m])
            d = tour[(pos[cands] + step) % m]
            gains = W[a, b] + W[cands, d] - W[a, cands] - W[b, d]
            gains[(cands == b) | (d == a)] = -np.inf
            k = int(np.argmax(gains))
            if gains[k] > tol:
                c, dd = int(cands[k]), int(d[k])
                j = int(pos[c])
                if step == 1:
                    reverse(i + 1, j) if i < j else reverse(j + 1, i)
                else:
                    reverse(j, i - 1) if j < i else reverse(i, j - 1)
                push(a, b, c, dd)
                return True
        return False

    def _or_opt(self, a: int, tour: np.ndarray, pos: np.ndarray, push, tol: float) -> bool:
        """Best move of the 1, 2 or 3 nodes starting at a to between a neighbour of one of its
        ends and that neighbour's next or previous node; True if one was made."""
        m, dummy, W = self.m, self.dummy, self.W
        i = int(pos[a])
        lengths = np.arange(1, min(3, m - i) + 1)  # segments tour[i : i + length], no wrap
        s0, p = a, int(tour[i - 1])
        s1 = tour[i + lengths - 1]
        q = tour[(i + lengths) % m]
        removal = W[p, s0] + W[s1, q] - W[p, q]
        keep = removal > tol
        if not keep.any():
            return False
        lengths, s1, q, removal = lengths[keep], s1[keep], q[keep], removal[keep]
        # candidates, one row per segment length: [nb[s0], nb[s1], nb[s0], nb[s1]]
        ends = np.stack([np.full_like(s1, s0), s1, np.full_like(s1, s0), s1], axis=1)
        c = self.nb[ends].reshape(len(lengths), -1)
        end = np.where(self.first_end, s0, s1[:, None])
        other = np.where(self.first_end, s1[:, None], s0)
        pc = pos[c]
        e = tour[(pc + self.side) % m]
        pe = pos[e]
        gains = removal[:, None] - (W[c, end] + W[other, e] - W[c, e])
        last = i + lengths[:, None]
        bad = ((pc >= i) & (pc < last)) | ((pe >= i) & (pe < last))  # c or e in the segment
        bad |= ((c == p) & (e == q[:, None])) | ((c == q[:, None]) & (e == p))  # where it was
        gains[bad] = -np.inf
        row, col = np.unravel_index(int(np.argmax(gains)), gains.shape)
        if not gains[row, col] > tol:
            return False
        length = int(lengths[row])
        cb, eb, endb = int(c[row, col]), int(e[row, col]), int(end[row, col])
        seg = tour[i:i + length]
        rest = np.concatenate([tour[:i], tour[i + length:]])
        where = np.empty(m, dtype=np.int64)
        where[rest] = np.arange(len(rest))
        at_c, at_e = int(where[cb]), int(where[eb])
        piece = seg if endb == s0 else seg[::-1]  # `end` goes next to c
        if (at_e - at_c) % len(rest) == 1:  # ... c, piece, e ...
            new = np.concatenate([rest[:at_c + 1], piece, rest[at_c + 1:]])
        else:  # ... e, reversed piece, c ...
            new = np.concatenate([rest[:at_e + 1], piece[::-1], rest[at_e + 1:]])
        new = np.roll(new, -int(np.nonzero(new == dummy)[0][0]))
        tour[:] = new
        pos[tour] = np.arange(m)
        push(a, int(seg[-1]), p, int(q[row]), cb, eb)
        return True
