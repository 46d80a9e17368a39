"""The float64 normal equations of one layer's refit and the two-fold cross-validation of its ridge.

A layer's rows (:mod:`torchinn.compression.regression`) are added chunk by chunk to a
:class:`NormalEquations`; :func:`cross_validate` fits each relative ridge strength on one half of
them, measures it on the other half and back, and returns the errors with the equations of all the
rows, which :meth:`NormalEquations.solve` then solves at the chosen ridge.

While a half has fewer rows than features (a language model's MLP fitted on one batch of tokens:
512 rows per half, 1,232 features), the rows themselves are kept instead of ``X^T X``, and the
solves and errors work in the rows' space: the same solution (``W = P + X^T (X X^T + lam I)^-1
(Y - X P)``, the push-through identity) from ``rows`` instead of ``features`` unknowns, and every
ridge's held-out error from one eigendecomposition of each half's ``X X^T``
(:func:`held_out_sse`), whose products are reused for the equations of all the rows.

>>> import torch
>>> g = torch.Generator().manual_seed(0)
>>> z = torch.randn(1, 40, 5, dtype=torch.float64, generator=g)  # 60 features that span 5 directions
>>> x = z @ torch.randn(5, 60, dtype=torch.float64, generator=g)
>>> y = z @ torch.randn(5, 3, dtype=torch.float64, generator=g)
>>> halves = [NormalEquations(), NormalEquations()]
>>> halves[0].add(x[:, :20], y[:, :20]); halves[1].add(x[:, 20:], y[:, 20:])
>>> prior = torch.zeros(1, 60, 3, dtype=torch.float64)
>>> held, total = cross_validate(halves, (1e-3, 1.0), prior)
>>> held[1e-3] < held[1.0] < halves[0].sse(prior) + halves[1].sse(prior), total.rows
(True, 40)
"""

from __future__ import annotations

import weakref
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

__all__ = ["NormalEquations", "cross_validate", "held_out_sse"]


class NormalEquations:
    """The normal equations of one layer's regression, accumulated over chunks of rows (float64):
    rows ``(groups, rows, features)``, targets ``(groups, rows, outputs)``. While there are fewer
    rows than features the rows are kept (no more bytes than ``X^T X``: see the module); from
    then on ``X^T X`` and ``X^T Y``."""

    def __init__(self) -> None:
        self.xtx: Tensor | None = None  # once the rows are as many as the features
        self.xty: Tensor | None = None
        self.diag: Tensor | None = None  # the sum of squares of each feature (the diagonal of X^T X)
        self.yty = 0.0
        self.rows = 0
        self.x: list[Tensor] = []  # the rows, while they are fewer than the features
        self.y: list[Tensor] = []
        self._cache: dict[str, Any] = {}

    @property
    def empty(self) -> bool:
        return self.diag is None

    def add(self, xs: Tensor, ys: Tensor) -> None:
        """Add float64 rows ``(groups, rows, features)`` and targets ``(groups, rows, outputs)``."""
        d = (xs * xs).sum(1)
        self.diag = d if self.diag is None else self.diag + d
        self.yty += float((ys * ys).sum())
        self.rows += xs.shape[1]
        if self.xtx is None:
            self.x.append(xs)
            self.y.append(ys)
            if self.rows >= xs.shape[2]:  # as many rows as features: the features' space from now on
                self.xtx, self.xty = _products(torch.cat(self.x, 1), torch.cat(self.y, 1))
                self.x, self.y = [], []
        else:
            a, c = _products(xs, ys)
            self.xtx += a
            self.xty += c
        self._cache = {}

    def merged(self, other: NormalEquations) -> NormalEquations:
        """The equations of both sets of rows (neither is changed)."""
        if other.empty:
            return self
        if self.empty:
            return other
        out = NormalEquations()
        out.yty, out.rows = self.yty + other.yty, self.rows + other.rows
        out.diag = self.diag + other.diag
        if self.xtx is None and other.xtx is None and out.rows < self.diag.shape[-1]:
            out.x, out.y = self.x + other.x, self.y + other.y
        else:
            (a, c), (a2, c2) = self._features_space(), other._features_space()
            out.xtx, out.xty = a + a2, c + c2
        return out

    def _features_space(self) -> tuple[Tensor, Tensor]:
        if self.xtx is not None and self.xty is not None:
            return self.xtx, self.xty
        return _products(*self._rows())

    def _rows(self) -> tuple[Tensor, Tensor] | None:
        """The rows and targets, when kept (fewer than the features: the dual form pays)."""
        if self.xtx is not None or not self.x:
            return None
        if "rows" not in self._cache:
            self._cache["rows"] = (torch.cat(self.x, 1), torch.cat(self.y, 1))
        return self._cache["rows"]

    def _gram(self) -> Tensor:
        if "gram" not in self._cache:
            x, _ = self._rows()
            self._cache["gram"] = x @ x.transpose(1, 2)
        return self._cache["gram"]

    def _residual(self, prior: Tensor) -> Tensor:
        """``Y - X prior`` on the kept rows (cached for the last ``prior``)."""
        if self._cache.get("prior") is not prior:
            x, y = self._rows()
            self._cache["prior"], self._cache["residual"] = prior, y - x @ prior
        return self._cache["residual"]

    def ridge(self, ridge: float) -> Tensor:
        """The ridge of each group: ``ridge`` times the mean diagonal of ``X^T X``."""
        return ridge * self.diag.mean(-1).clamp_min(1e-12)

    def sse(self, m: Tensor) -> float:
        """Sum of squared errors of the weights ``m`` (regression layout) on these rows."""
        rows = self._rows()
        if rows is not None:
            if self._cache.get("prior") is m:
                return float((self._residual(m) ** 2).sum())
            x, y = rows
            return float(((x @ m - y) ** 2).sum())
        return max(0.0, float((m * (self.xtx @ m)).sum() - 2 * (m * self.xty).sum()) + self.yty)

    def solve(self, ridge: float, prior: Tensor) -> Tensor:
        """Least squares with a ridge (relative to the mean diagonal) pulling towards ``prior``."""
        lam = self.ridge(ridge)
        rows = self._rows()
        if rows is not None:  # fewer rows than features: solve in the rows' space
            a, rhs = self._gram().clone(), self._residual(prior)
        else:
            a, rhs = self.xtx.clone(), self.xty + lam[:, None, None] * prior
        a.diagonal(dim1=1, dim2=2).add_(lam[:, None])
        chol, info = torch.linalg.cholesky_ex(a)  # positive definite but for rounding
        if bool((info == 0).all()):
            out = torch.cholesky_solve(rhs, chol)
        else:
            out = torch.linalg.solve(a, rhs)
        return prior + rows[0].transpose(1, 2) @ out if rows is not None else out


def _products(x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
    xt = x.transpose(1, 2)
    return xt @ x, xt @ y


#: the cost of one eigendecomposition of an ``n x n`` symmetric matrix, and of one Cholesky
#: factorisation, in ``n^3`` multiply-adds of a matrix product (float64, one thread, n = 289-2,305:
#: eigh 4.7-6.5, Cholesky 0.3); a Cholesky solve costs 1.5 products of its size
EIGH_COST, CHOLESKY_COST, CHOLESKY_SOLVE_COST = 6.0, 0.3, 1.5


def eigen_pays(basis: int, features: int, outputs: int, ridges: int, rows_space: bool) -> bool:
    """Whether :func:`held_out_sse`'s eigendecomposition costs less than solving and measuring each
    ridge: ``basis`` unknowns (the half's rows in the rows' space, else its features)."""
    n, f, o = basis, features, outputs
    if rows_space:  # per ridge: factorise, solve, map back to weights, predict the other half
        each = CHOLESKY_COST * n**3 + CHOLESKY_SOLVE_COST * n * n * o + 2 * n * f * o
        once = (EIGH_COST + 2) * n**3 + n * n * f + 3 * n * n * o
    else:  # per ridge: factorise, solve, measure on the other half's X^T X
        each = CHOLESKY_COST * n**3 + (CHOLESKY_SOLVE_COST + 1) * n * n * o
        once = (EIGH_COST + 2) * n**3 + 5 * n * n * o
    return once < ridges * each


def held_out_sse(fit: NormalEquations, held: NormalEquations, ridges: Sequence[float],
                 prior: Tensor) -> list[float] | None:
    """The sum of squared errors on ``held``'s rows of ``fit.solve(r, prior)`` for every ``r`` in
    ``ridges``, or None where that is cheaper to compute by solving each (:func:`eigen_pays`) or
    one half keeps its rows and the other ``X^T X``.

    Equal to solving and measuring each ridge (to float64 rounding), from one eigendecomposition.
    In the rows' space, of ``X X^T = U diag(s) U^T`` (``fit``'s rows): ``held``'s residual after the
    solve with ridge ``lam`` is ``R_h - K U diag(1 / (s + lam)) U^T R``, with ``K`` the products of
    ``held``'s rows with ``fit``'s. In the features' space, of ``X^T X = V diag(s) V^T``: the solve
    moves the prior by ``V diag(1 / (s + lam)) V^T (X^T Y - X^T X P)``. Either way the squared
    error expands into a sum over the basis and one over its pairs per ridge."""
    rows = fit._rows() is not None and held._rows() is not None
    if not rows and (fit.xtx is None or held.xtx is None):
        return None
    _, f, o = prior.shape
    if not eigen_pays(fit.rows if rows else f, f, o, len(ridges), rows):
        return None
    base, cross, quad, s = (_rows_terms if rows else _features_terms)(fit, held, prior)
    out = []
    for ridge in ridges:
        inv = 1.0 / (s + fit.ridge(ridge)[:, None])
        err = base - 2 * float((cross * inv).sum()) + float((quad * inv[:, :, None] * inv[:, None, :]).sum())
        out.append(max(0.0, err))
    return out


def _rows_terms(fit: NormalEquations, held: NormalEquations, prior: Tensor) -> tuple[float, Tensor, Tensor, Tensor]:
    r, rh = fit._residual(prior), held._residual(prior)
    s, u = torch.linalg.eigh(fit._gram())
    m = _cross(fit, held) @ u  # held's rows against fit's eigenvectors
    q = u.transpose(1, 2) @ r
    cross = ((m.transpose(1, 2) @ rh) * q).sum(-1)  # (groups, basis)
    quad = (m.transpose(1, 2) @ m) * (q @ q.transpose(1, 2))  # (groups, basis, basis)
    return float((rh * rh).sum()), cross, quad, s.clamp_min(0.0)


def _cross(fit: NormalEquations, held: NormalEquations, make: bool = True) -> Tensor | None:
    """``held``'s rows times ``fit``'s (transposed), made once per pair: kept on ``fit`` beside a weak
    reference to ``held``, and read transposed from ``held`` when it was made the other way
    (``make=False``: None when neither has it)."""
    for owner, partner, flip in ((fit, held, False), (held, fit, True)):
        kept = owner._cache.get("cross")
        if kept is not None and kept[0]() is partner:
            return kept[1].transpose(1, 2) if flip else kept[1]
    if not make:
        return None
    (x, _), (xh, _) = fit._rows(), held._rows()
    fit._cache["cross"] = (weakref.ref(held), xh @ x.transpose(1, 2))
    return fit._cache["cross"][1]


def _features_terms(fit: NormalEquations, held: NormalEquations, prior: Tensor) -> tuple[float, Tensor, Tensor, Tensor]:
    s, v = torch.linalg.eigh(fit.xtx)
    vt = v.transpose(1, 2)
    z = vt @ (fit.xty - fit.xtx @ prior)  # the move of the prior, before the ridge's 1 / (s + lam)
    e = held.xtx @ prior - held.xty
    cross = -((vt @ e) * z).sum(-1)
    quad = (vt @ held.xtx @ v) * (z @ z.transpose(1, 2))
    return held.sse(prior), cross, quad, s.clamp_min(0.0)


def cross_validate(halves: Sequence[NormalEquations], ridges: Sequence[float],
                   prior: Tensor) -> tuple[dict[float, float], NormalEquations]:
    """Each ridge's squared error on each half of the solve on the other half, summed, and the
    equations of both halves (in the rows' space with their products already made)."""
    a, b = halves
    fast = [held_out_sse(a, b, ridges, prior), held_out_sse(b, a, ridges, prior)]
    if fast[0] is not None and fast[1] is not None:
        held = {r: e + f for r, e, f in zip(ridges, fast[0], fast[1])}
    else:
        held = {r: b.sse(a.solve(r, prior)) + a.sse(b.solve(r, prior)) for r in ridges}
    total = a.merged(b)
    if total._rows() is not None and total is not a and total is not b and a._rows() is not None \
            and b._rows() is not None:
        kab = _cross(a, b, make=False)  # b's rows x a's rows, where the held-out errors made them
        if kab is not None:
            top = torch.cat([a._gram(), kab.transpose(1, 2)], 2)
            total._cache["gram"] = torch.cat([top, torch.cat([kab, b._gram()], 2)], 1)
        total._cache["prior"] = prior
        total._cache["residual"] = torch.cat([a._residual(prior), b._residual(prior)], 1)
    return held, total
