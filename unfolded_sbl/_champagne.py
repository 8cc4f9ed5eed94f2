"""Champagne with convex-bounding updates: the solver's math in one place.

Batched over samples that share one lead field, in torch (float64 by default).
Everything runs on the data covariance ``Cy = Y Y^T / T`` through a factor
``V`` with ``V V^T = Cy``, so the cost per iteration does not grow with T.

Notation (``METHOD.md``): lead field ``L`` (N x M), source variances ``gamma``
(M,), noise variances ``lam`` (N,), model covariance
``Sy = L diag(gamma) L^T + diag(lam)``, ``S = Sy^-1``.  One iteration:

* sources, with (gamma_k, lam_k):
  ``gamma[m] <- gamma[m] * sqrt(l_m^T S Cy S l_m / l_m^T S l_m)``;
* noise, with (gamma_{k+1}, lam_k):
  ``lam[n] <- lam[n] * sqrt((S Cy S)[n, n] / S[n, n])`` (heteroscedastic), or
  the same with both sums taken over n (homoscedastic);
* the posterior with (gamma_{k+1}, lam_{k+1}) starts the next iteration.

Each step is a majorise-minimise step of the Type-II cost
``log det Sy + trace(Cy S)``, so the cost never increases.  ``S`` is never
inverted: with its Cholesky factor ``Sy = C C^T`` and the triangular
``P = C^-1`` (a triangular solve against the identity, N x N, cheap),
``S = P^T P``.  The expensive products, ``L diag(gamma) L^T`` and
``diag(L^T A L)`` for a batch, are single matrix products against the
per-source outer products ``l_m l_m^T`` (upper triangles only).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

#: Floor on learned noise variances, relative to the mean data power, that keeps
#: the model covariance positive definite when the noise estimate collapses.
NOISE_FLOOR = 1e-10


@dataclass
class ChampagneResult:
    """Output of :func:`champagne` (normalised units where stated)."""

    sources: torch.Tensor  # (B, M, T) posterior mean
    source_var: torch.Tensor  # (B, M)
    noise_var: torch.Tensor  # (B, N) diagonal (or (B, N, N) when a full covariance was given)
    n_iter: int
    history: dict = field(default_factory=dict)


def covariance_factor(Y):
    """``V`` with ``V V^T = Y Y^T / T``: ``Y / sqrt(T)`` when T <= N, else an eigen-factor."""
    n_channels, n_times = Y.shape[-2:]
    if n_times <= n_channels:
        return Y / n_times ** 0.5
    cov = Y @ Y.transpose(-1, -2) / n_times
    evals, evecs = torch.linalg.eigh(cov)
    return evecs * evals.clamp(min=0).sqrt().unsqueeze(-2)


def pair_products(lead_field):
    """Per-source outer products ``l_m l_m^T``, upper triangle only: (N(N+1)/2, M).

    With them ``L diag(gamma) L^T`` and ``diag(L^T A L)`` for a whole batch are
    single matrix products against this one matrix (symmetry halves the work).
    """
    rows, cols = torch.triu_indices(lead_field.shape[0], lead_field.shape[0],
                                    device=lead_field.device)
    return lead_field[rows] * lead_field[cols], rows, cols


#: Below this batch size the products run per sample (matrix-vector products
#: against the pair matrix would be memory bound).
PAIR_BATCH_MIN = 8


class _PairOps:
    """``L diag(g) L^T`` and ``diag(L^T A L)`` for batches of g and symmetric A.

    For batches of ``PAIR_BATCH_MIN`` or more, both are single matrix products
    against the upper-triangle outer products ``l_m l_m^T``; smaller batches use
    the lead field directly.
    """

    def __init__(self, lead_field, batch_size, paired=None):
        n = self.n = lead_field.shape[0]
        self.lead_field = lead_field
        self.paired = batch_size >= PAIR_BATCH_MIN if paired is None else paired
        if not self.paired:
            return
        self.products, rows, cols = pair_products(lead_field)
        # Off-diagonal pairs count twice in a quadratic form.
        weights = torch.where(rows == cols, 1.0, 2.0).to(lead_field.dtype)
        self.weighted_products = self.products * weights[:, None]
        self.flat_upper = rows * n + cols
        # Every entry of the full matrix, as an index into the upper-triangle pairs.
        pair_index = torch.empty(n, n, dtype=torch.long, device=lead_field.device)
        pair_index[rows, cols] = torch.arange(len(rows), device=lead_field.device)
        pair_index[cols, rows] = pair_index[rows, cols]
        self.pair_index = pair_index.reshape(-1)

    def signal_cov(self, source_var):
        if not self.paired:
            return (self.lead_field * source_var.unsqueeze(-2)) @ self.lead_field.T
        upper = source_var @ self.products.T  # (B, P)
        return upper[:, self.pair_index].reshape(-1, self.n, self.n)

    def quad_diag(self, *syms):
        """``diag(L^T A L)`` for each symmetric (B, N, N) A -> (B, M) each."""
        if not self.paired:
            return tuple(((a @ self.lead_field) * self.lead_field).sum(-2) for a in syms)
        flat = torch.cat([a.reshape(a.shape[0], -1) for a in syms])[:, self.flat_upper]
        return (flat @ self.weighted_products).split(syms[0].shape[0])


def _add_noise(signal_cov, noise):
    """signal_cov + noise, noise diagonal (B, N) or full (B, N, N)."""
    return signal_cov + (torch.diag_embed(noise) if noise.dim() == 2 else noise)


def _precision_factor(model_cov):
    """Cholesky factor C of the model covariance and ``P = C^-1`` (so ``S = P^T P``)."""
    chol = torch.linalg.cholesky(model_cov)
    eye = torch.eye(chol.shape[-1], dtype=chol.dtype, device=chol.device)
    inv_chol = torch.linalg.solve_triangular(chol, eye.expand_as(chol), upper=False)
    return chol, inv_chol


def type2_cost(chol, U):
    """``log det Sy + trace(Cy S)`` from ``Sy = C C^T`` and ``U = C^-1 V``."""
    logdet = 2 * torch.log(torch.diagonal(chol, dim1=-2, dim2=-1)).sum(-1)
    return logdet + (U ** 2).sum((-2, -1))


def champagne(Y, lead_field, source_var, noise_var, noise_mode="learn", n_iter=25,
              tol=0.0, prune_threshold=None, keep_history=False):
    """Run convex-bounding Champagne on a batch.

    Parameters
    ----------
    Y : tensor, shape (B, N, T)
        Sensor data (already referenced and normalised by the caller).
    lead_field : tensor, shape (N, M)
    source_var : tensor, shape (B, M)
        Initial source variances (> 0).
    noise_var : tensor, shape (B, N) or (B, N, N)
        Initial (``noise_mode`` "learn"/"homoscedastic") or fixed ("fixed")
        noise variances; a (B, N, N) tensor is a fixed full noise covariance.
    noise_mode : {"learn", "homoscedastic", "fixed"}
    n_iter : int
        Maximum number of iterations.
    tol : float
        Stop when ``sum|gamma_new - gamma| / sum|gamma|`` is below ``tol`` for
        every sample (0 runs exactly ``n_iter`` iterations).
    prune_threshold : float | None
        Set ``gamma[m] = 0`` where ``gamma[m] < prune_threshold * max(gamma)``
        after each source update (a pruned source stays pruned).
    keep_history : bool
        Record the cost, source and noise variances before every iteration and
        after the last.

    Returns
    -------
    result : ChampagneResult
    """
    ops = _PairOps(lead_field, len(Y))
    V = covariance_factor(Y)
    has_gain = (lead_field ** 2).sum(0) > 0
    tiny = torch.finfo(Y.dtype).tiny
    source_var = torch.where(has_gain, source_var, torch.zeros_like(source_var))
    noise = noise_var.clone()
    floor = NOISE_FLOOR * (V ** 2).sum((-2, -1)).clamp(min=tiny) / lead_field.shape[0]
    history = {"cost": [], "source_var": [], "noise_var": []}

    signal_cov = ops.signal_cov(source_var)
    chol, inv_chol = _precision_factor(_add_noise(signal_cov, noise))
    iteration = 0
    for iteration in range(1, n_iter + 1):
        U = inv_chol @ V
        if keep_history:
            _record(history, type2_cost(chol, U), source_var, noise)
        # Source update: S = P^T P, S Cy S = (P^T U)(P^T U)^T.
        SV = inv_chol.transpose(-1, -2) @ U
        precision = inv_chol.transpose(-1, -2) @ inv_chol
        # l^T S l and l^T S Cy S l
        gain, fit = ops.quad_diag(precision, SV @ SV.transpose(-1, -2))
        ratio = torch.where(has_gain, fit.clamp(min=0) / gain.clamp(min=tiny),
                            torch.zeros_like(gain))
        new_source_var = source_var * ratio.sqrt()
        if prune_threshold:
            peak = new_source_var.amax(-1, keepdim=True)
            new_source_var = torch.where(new_source_var < prune_threshold * peak,
                                         torch.zeros_like(new_source_var), new_source_var)
        change = ((new_source_var - source_var).abs().sum(-1)
                  / source_var.abs().sum(-1).clamp(min=tiny))
        source_var = new_source_var
        signal_cov = ops.signal_cov(source_var)
        if noise_mode != "fixed":
            # Noise update with the new source variances and the old noise.
            _, inv_chol = _precision_factor(_add_noise(signal_cov, noise))
            s_diag = (inv_chol ** 2).sum(-2)  # S[n, n]
            scs_diag = ((inv_chol.transpose(-1, -2) @ (inv_chol @ V)) ** 2).sum(-1)
            if noise_mode == "homoscedastic":
                scs_diag = scs_diag.sum(-1, keepdim=True)
                s_diag = s_diag.sum(-1, keepdim=True)
            noise = torch.maximum(noise * (scs_diag / s_diag).sqrt(), floor.unsqueeze(-1))
        chol, inv_chol = _precision_factor(_add_noise(signal_cov, noise))
        if tol and bool((change < tol).all()):
            break
    if keep_history:
        _record(history, type2_cost(chol, inv_chol @ V), source_var, noise)
        history = {k: torch.stack(v, dim=1) for k, v in history.items()}
    else:
        history = {}
    SY = inv_chol.transpose(-1, -2) @ (inv_chol @ Y)  # S Y
    sources = source_var.unsqueeze(-1) * (lead_field.T @ SY)  # Gamma L^T S Y
    return ChampagneResult(sources, source_var, noise, iteration, history)


def _record(history, cost, source_var, noise):
    history["cost"].append(cost)
    history["source_var"].append(source_var)
    history["noise_var"].append(noise)
