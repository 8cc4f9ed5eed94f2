"""Champagne with convex-bounding updates: the solver's math in one place.

Batched over samples that share one lead field, in torch (float64 by default).
Everything runs on the data covariance ``Cy = Y Y^T / T`` through a factor
``V`` with ``V V^T = Cy``, so the cost per iteration does not grow with T.

Notation (the preprint, section 2): lead field ``L`` (N x M), source variances ``gamma``
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
``S = P^T P``.

Average reference.  A referenced lead field has rank N - 1: the constant
vector ``u = 1 / sqrt(N)`` is in the null space of ``L^T`` and the data have no
power along it.  The model is then the one of the referenced data, as MNE
treats rank-deficient EEG: with ``H = I - u u^T`` the model covariance is
``H Sy H`` restricted to the (N - 1)-dimensional subspace, and ``S`` is its
pseudo-inverse ``S = (H Sy H + c u u^T)^-1 - u u^T / c`` (any ``c > 0``; we
take the mean diagonal, which keeps the factorised matrix well conditioned).
The update formulas keep their form (the noise enters as ``H diag(lam) H``,
i.e. as "sources" with lead fields ``H e_n``), each step is still an MM step
of the Type-II cost of the referenced data, and the matrix that is factorised
no longer has a structurally null direction filled only by the noise: that
direction is what made the learned noise collapse and float32 factorisations
fail at high SNR.  The expensive products, ``L diag(gamma) L^T`` and
``diag(L^T A L)`` for a batch, are single matrix products against the
per-source outer products ``l_m l_m^T`` (upper triangles only).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

#: Floor on learned noise variances, relative to the mean data power, that keeps
#: the model covariance positive definite when the noise estimate collapses
#: (noise-free or rank-deficient data), per working precision: float32 cannot
#: resolve a noise level much below its round-off of the assembled covariance.
NOISE_FLOOR = {torch.float64: 1e-10, torch.float32: 1e-5}
#: Diagonal jitter, relative to the mean diagonal, added to the matrix that is
#: factorised when it was assembled in float32: the round-off of the float32
#: products (about 1e-6 of the signal scale) can make it indefinite otherwise.
#: 0 in float64, so that float64 networks equal ClassicalCB exactly.
FACTOR_JITTER = {torch.float64: 0.0, torch.float32: 1e-5}
#: |cos| between every lead-field column and the constant vector below which the
#: lead field counts as average-referenced.
REFERENCE_TOL = 1e-3


@dataclass
class ChampagneResult:
    """Output of :func:`champagne` (normalised units where stated)."""

    sources: torch.Tensor  # (B, M, T) posterior mean
    source_var: torch.Tensor  # (B, M)
    noise_var: torch.Tensor  # (B, N) diagonal (or (B, N, N) when a full covariance was given)
    n_iter: int
    history: dict = field(default_factory=dict)


def covariance_factor(Y):
    """``V`` with ``V V^T = Y Y^T / T``: ``Y / sqrt(T)`` when T <= N, else the
    triangular factor ``R^T / sqrt(T)`` of ``Y^T = Q R``.

    The solver sees the data only through ``V V^T``.  QR needs no positive
    definiteness (rank-deficient data are fine) and costs a fraction of an
    eigendecomposition of ``Y Y^T``.
    """
    n_channels, n_times = Y.shape[-2:]
    if n_times <= n_channels:
        return Y / n_times ** 0.5
    triangular = torch.linalg.qr(Y.transpose(-1, -2), mode="r")[1]  # (B, N, N)
    return triangular.transpose(-1, -2) / n_times ** 0.5


def row_space(Y):
    """The data on their row space: ``(Yc, Q, shrink)`` for T > N.

    With the thin QR ``Y^T = Q R`` (Q: (B, T, N) orthonormal columns) and
    ``shrink = sqrt(N / T)``, ``Yc = shrink R^T`` (B, N, N) has
    ``Yc Yc^T / N = Y Y^T / T``, and an estimate linear in the data maps back as
    ``W Y = (W Yc) Q^T / shrink``.
    """
    n_channels, n_times = Y.shape[-2:]
    Q, R = torch.linalg.qr(Y.transpose(-1, -2))
    shrink = (n_channels / n_times) ** 0.5
    return shrink * R.transpose(-1, -2), Q, shrink


def pair_products(lead_field):
    """Per-source outer products ``l_m l_m^T``, upper triangle only: (N(N+1)/2, M).

    With them ``L diag(gamma) L^T`` and ``diag(L^T A L)`` for a whole batch are
    single matrix products against this one matrix (symmetry halves the work).
    """
    rows, cols = upper_triangle(lead_field)
    if torch.onnx.is_in_onnx_export():
        return lead_field[rows] * lead_field[cols], rows, cols
    # in place: at 128 channels and 5124 sources each (P, M) copy is 340 MB in float64
    return lead_field[rows].mul_(lead_field[cols]), rows, cols


def _index_grid(n, device):
    """Row and column index of every entry of an n x n matrix, each (n, n), from
    ``arange`` and broadcasting so that an exported graph keeps ``n`` dynamic."""
    idx = torch.arange(n, device=device)
    return idx.unsqueeze(1) + idx.unsqueeze(0) * 0, idx.unsqueeze(0) + idx.unsqueeze(1) * 0


def upper_triangle(lead_field):
    """Row and column indices of the upper triangle of an N x N matrix, row-major
    (as ``torch.triu_indices``), built from ``arange`` and a mask so that an
    exported graph computes them from its dynamic channel count."""
    rows, cols = _index_grid(lead_field.shape[0], lead_field.device)
    upper = (rows <= cols).reshape(-1)
    return rows.reshape(-1)[upper], cols.reshape(-1)[upper]


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
        # float32 graphs gather the upper triangle with the matrix entries on the
        # first axis, so that each index copies a whole row of batch values:
        # onnxruntime's float32 Gather along the last axis copies one value at a
        # time.  Its float64 Gather is fast and torch prefers the batch first, so
        # only float32 exports change the layout.
        self.entries_first = (torch.onnx.is_in_onnx_export()
                              and lead_field.dtype == torch.float32)
        if not self.paired:
            return
        self.products, rows, cols = pair_products(lead_field)
        # Off-diagonal pairs count twice in a quadratic form.
        self.pair_weights = torch.where(rows == cols, 1.0, 2.0).to(lead_field.dtype)
        self._weighted_products = None
        self.flat_upper = rows * n + cols
        # Every entry (i, j) of the full matrix as an index into the row-major upper
        # triangle: a * n - a (a - 1) / 2 + (b - a) with a = min(i, j), b = max(i, j)
        # (arithmetic, not a scatter, so that it exports with a dynamic n).
        i, j = _index_grid(n, lead_field.device)
        a, b = torch.minimum(i, j), torch.maximum(i, j)
        self.pair_index = (a * n - torch.div(a * (a - 1), 2, rounding_mode="floor")
                           + (b - a)).reshape(-1)

    @property
    def weighted_products(self):
        """The pair products with the off-diagonal pairs doubled, (P, M), built on
        first use: exported graphs contract against it; eager runs weight the
        gathered triangles instead and never hold this second (P, M) matrix."""
        if self._weighted_products is None:
            self._weighted_products = self.products * self.pair_weights[:, None]
        return self._weighted_products

    def signal_cov(self, source_var):
        if not self.paired:
            return (self.lead_field * source_var.unsqueeze(-2)) @ self.lead_field.T
        if self.entries_first:
            upper = self.products @ source_var.T  # (P, B)
            return upper[self.pair_index].T.reshape(-1, self.n, self.n)
        upper = source_var @ self.products.T  # (B, P)
        return upper[:, self.pair_index].reshape(-1, self.n, self.n)

    def quad_diag(self, *syms):
        """``diag(L^T A L)`` for each symmetric (B, N, N) A -> (B, M) each."""
        if not self.paired:
            return tuple(((a @ self.lead_field) * self.lead_field).sum(-2) for a in syms)
        if torch.onnx.is_in_onnx_export():
            # stacked on a leading axis of static size (not concatenated along the
            # batch and split by its size, which an exported graph would freeze)
            stacked = torch.stack(syms)
            if self.entries_first:
                flat = stacked.reshape(-1, self.n * self.n).T[self.flat_upper]  # (P, k B)
                products = flat.T @ self.weighted_products
                return tuple(products.reshape(len(syms), -1, products.shape[-1]).unbind(0))
            flat = stacked.reshape(len(syms), stacked.shape[1], -1)[..., self.flat_upper]
            return tuple((flat @ self.weighted_products).unbind(0))
        # eager: each upper triangle gathered straight into one (k, B, P) operand,
        # without first stacking the (k, B, N, N) matrices
        flat = torch.stack([a.reshape(a.shape[0], -1)[:, self.flat_upper] for a in syms])
        return tuple(((flat * self.pair_weights) @ self.products).unbind(0))


def identity_like(n_channels, like):
    """Identity built from ``arange`` so that exported graphs keep a dynamic size."""
    idx = torch.arange(n_channels, device=like.device)
    return (idx.unsqueeze(0) == idx.unsqueeze(1)).to(like.dtype)


def diagonal(matrix):
    """Batched diagonal: a view in torch; a gather of the flattened matrix while
    exporting to ONNX, where ``torch.diagonal`` does not export cleanly."""
    if torch.onnx.is_in_onnx_export():
        # a Gather of the flattened matrix at the strided diagonal positions (a
        # Range of the dynamic size), not a masked sum over all N x N entries
        n = matrix.shape[-1]
        flat_index = torch.arange(n, device=matrix.device) * (n + 1)
        return matrix.reshape(matrix.shape[:-2] + (n * n,))[..., flat_index]
    return torch.diagonal(matrix, dim1=-2, dim2=-1)


def reference_projector(lead_field):
    """``w u u^T`` (N, N): ``u`` the unit constant vector, ``w`` 1 for a lead field
    orthogonal to it (average reference), else 0.  Built from tensor ops only, so
    that exported graphs decide it from their ``lead_field`` input."""
    ones = lead_field[:, :1] * 0 + 1  # (N, 1)
    u = ones / ones.sum().sqrt()
    col_norm = (lead_field ** 2).sum(0).sqrt()
    cosine = (u * lead_field).sum(0).abs() / col_norm.clamp(min=torch.finfo(u.dtype).tiny)
    referenced = (cosine.max() < REFERENCE_TOL).to(u.dtype)
    return referenced * (u @ u.T)


def referenced_model_cov(signal_cov, noise_cov, ref, eye, jitter=0.0):
    """Matrix to factorise, ``H (signal + noise) H + c w u u^T``, and ``c`` (B, 1, 1).

    ``noise_cov`` is (B, N) (diagonal) or (B, N, N); ``ref = w u u^T``.  The
    signal covariance is already in the referenced subspace.  The precision of
    the referenced model is ``inverse(result) - ref / c`` (:func:`subtract_reference`).
    ``jitter`` adds ``jitter * c`` to the diagonal.
    """
    if noise_cov.dim() == 2:
        # H D H for diagonal D = diag(d), element-wise (no N x N products): every
        # entry of R = w u u^T is r = w / N, R D R = mean(d) R, so
        #   H D H + c R = diag(d) - R o (d 1^T + 1 d^T - (mean(d) + c))
        # with c = mean(diag(signal)) + (1 - r) mean(d) computed from diagonals:
        # three element-wise passes over the (B, N, N) batch instead of nine (a
        # large share of ClassicalCB's own time at batch 64).
        mean_d = noise_cov.mean(-1).reshape(-1, 1, 1)
        scale = (diagonal(signal_cov).mean(-1).reshape(-1, 1, 1)
                 + (1 - ref[..., :1, :1]) * mean_d)
        # the shift goes onto the (B, 1, N) row first: one (B, N, N) pass, not two
        offset = (noise_cov.unsqueeze(-2) - (mean_d + scale)) + noise_cov.unsqueeze(-1)
        model_cov = torch.addcmul(signal_cov, offset, ref, value=-1.0)
        on_diagonal = noise_cov + jitter * scale.reshape(-1, 1) if jitter else noise_cov
        if torch.onnx.is_in_onnx_export():  # no in-place views in graphs
            return model_cov + eye * on_diagonal.unsqueeze(-1), scale
        model_cov.diagonal(dim1=-2, dim2=-1).add_(on_diagonal)
        return model_cov, scale
    proj = eye - ref
    model_cov = signal_cov + proj @ noise_cov @ proj
    scale = diagonal(model_cov).mean(-1).reshape(-1, 1, 1)
    model_cov = model_cov + scale * ref
    return (model_cov + jitter * scale * eye if jitter else model_cov), scale


def subtract_reference(inverse, ref, scale, in_place=False):
    """``inverse - ref / c``: the precision of the referenced model.  Every entry of
    ``ref`` is the same (``w / N``), so this is one pass with a per-sample scalar
    instead of building ``ref / c`` as a (B, N, N) tensor first.  ``in_place``
    overwrites ``inverse`` (gradient-free solvers: no second (B, N, N) tensor)."""
    if in_place:
        return inverse.sub_(ref[..., :1, :1] / scale)
    return inverse - ref[..., :1, :1] / scale


#: Jitters (relative to the mean diagonal) tried, in turn, on the samples whose
#: model covariance is not numerically positive definite.
RETRY_JITTERS = (1e-12, 1e-10, 1e-8, 1e-6, 1e-4, 1e-2)


def safe_cholesky(matrix):
    """Batched Cholesky factor that never raises on a PSD-up-to-round-off matrix.

    Samples whose factorisation fails (round-off made the matrix indefinite,
    e.g. noise-free data driving the noise to its floor) are factorised again
    with a growing diagonal jitter, relative to their mean diagonal; the
    others are untouched.
    """
    chol, info = torch.linalg.cholesky_ex(matrix)
    failed = info > 0
    if not bool(failed.any()):
        return chol
    n = matrix.shape[-1]
    eye = torch.eye(n, dtype=matrix.dtype, device=matrix.device)
    scale = torch.diagonal(matrix, dim1=-2, dim2=-1).mean(-1).abs().reshape(-1, 1, 1)
    jitter = torch.zeros_like(scale)
    for value in RETRY_JITTERS:
        # One factorisation of the whole batch, with a jitter on the failing samples
        # only: mixing factors with torch.where would pass the NaN gradients of the
        # failed factorisation back through the unselected branch.
        jitter = torch.where(failed.reshape(-1, 1, 1), value * scale, jitter)
        chol, info = torch.linalg.cholesky_ex(matrix + jitter * eye)
        failed = info > 0
        if not bool(failed.any()):
            return chol
    raise ValueError("the model covariance is not positive definite even with a jitter of "
                     f"{RETRY_JITTERS[-1]} of its diagonal: the input is degenerate")


def type2_cost(chol, V, log_scale):
    """``log det Sy + trace(Cy S)`` from ``Sy = C C^T`` and ``Cy = V V^T``.

    ``log_scale`` removes the determinant of the added reference direction.
    """
    U = torch.linalg.solve_triangular(chol, V, upper=False)  # C^-1 V
    logdet = 2 * torch.log(torch.diagonal(chol, dim1=-2, dim2=-1)).sum(-1)
    return logdet - log_scale + (U ** 2).sum((-2, -1))


#: Source variances below this fraction of their sample's largest are set to 0
#: ("collapsed"): the update is multiplicative, so such a source contributes
#: less than this to the model covariance and cannot come back within any
#: practical number of iterations.  Lead-field columns collapsed in every
#: sample still running are then dropped from the products, which is exact on
#: the remaining problem (a zero variance adds nothing to the covariance).
COLLAPSED = 1e-12
#: Drop collapsed columns once this fraction of the current ones has collapsed
#: (rebuilding the pair products costs about one iteration).
COMPACT_FRACTION = 0.25


def champagne(Y, lead_field, source_var, noise_var, noise_mode="learn", n_iter=25,
              tol=0.0, prune_threshold=None, keep_history=False, group_size=1):
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
        Stop a sample when ``sum|gamma_new - gamma| / sum|gamma|`` falls below
        ``tol``; the others go on without it, so a batch does not wait for its
        slowest sample (0 runs exactly ``n_iter`` iterations).  With
        ``keep_history`` the batch runs until every sample has converged.
    prune_threshold : float | None
        Set ``gamma[m] = 0`` where ``gamma[m] < prune_threshold * max(gamma)``
        after each source update (a pruned source stays pruned).  Variances
        below ``COLLAPSED`` of the maximum are always set to 0 and their
        columns dropped when every running sample has lost them.
    keep_history : bool
        Record the cost, source and noise variances before every iteration and
        after the last.
    group_size : int
        Consecutive lead-field columns in groups of this size share one variance
        (the x, y, z dipoles of one location: free orientation), updated as MNE's
        gamma_map groups them: ``gamma_g <- gamma_g sum_m sqrt(l_m^T S Cy S l_m) /
        (k sqrt(sum_m l_m^T S l_m))`` over the group's k columns.

    Returns
    -------
    result : ChampagneResult
        ``n_iter`` is the largest number of iterations any sample ran.
    """
    n_batch, n_sources = source_var.shape
    V = covariance_factor(Y)
    eye = identity_like(lead_field.shape[0], Y)
    ref = reference_projector(lead_field)
    tiny = torch.finfo(Y.dtype).tiny
    has_gain = (lead_field ** 2).sum(0) > 0
    source_var = torch.where(has_gain, source_var, torch.zeros_like(source_var))
    noise = noise_var.clone()
    floor = (NOISE_FLOOR.get(Y.dtype, 1e-6) * (V ** 2).sum((-2, -1)).clamp(min=tiny)
             / lead_field.shape[0]).unsqueeze(-1)
    if noise.dim() == 2:  # diagonal noise, learned or given: same floor
        noise = torch.maximum(noise, floor)
    history = {"cost": [], "source_var": [], "noise_var": []}
    per_sample_stop = bool(tol) and not keep_history
    # outputs of finished samples, written as they stop
    out_sources = Y.new_empty((n_batch, n_sources, Y.shape[-1]))  # every row is written
    out_source_var = Y.new_zeros((n_batch, n_sources))
    out_noise = torch.zeros_like(noise)
    running = torch.arange(n_batch, device=Y.device)  # batch rows still iterating
    columns = torch.arange(n_sources, device=Y.device)  # lead-field columns still in use
    ops = _PairOps(lead_field, n_batch)

    def factorise(signal_cov, noise):
        """Cholesky factor, the precision S and the log of ``c`` (B,)."""
        model_cov, scale = referenced_model_cov(signal_cov, noise, ref, eye)
        chol = safe_cholesky(model_cov)
        # LAPACK's inverse from the factor (potri), as the network does, rather than
        # C^-1 by a triangular solve and then C^-T C^-1: one call and no C^-1 to carry.
        precision = subtract_reference(torch.cholesky_inverse(chol), ref, scale, in_place=True)
        return chol, precision, torch.log(scale.reshape(-1)) * ref.trace()

    def finish(rows, precision_rows):
        """Write the posterior mean ``Gamma L^T S Y`` of the batch rows ``rows``."""
        idx = running[rows]
        SY = precision_rows @ Y[idx]
        if len(idx) == n_batch and len(columns) == n_sources:
            # The whole batch at once (always, without per-sample stopping): into the
            # output in place: a fresh (B, M, T) product and a fresh scaled copy of
            # it spend most of their time faulting in new pages.
            torch.matmul(lead_field.T, SY, out=out_sources)
            out_sources.mul_(source_var.unsqueeze(-1))
        else:
            sub = lead_field[:, columns]
            out_sources[idx] = 0
            out_sources[idx.unsqueeze(-1), columns] = source_var[rows].unsqueeze(-1) * (
                sub.T @ SY)
        out_source_var[idx.unsqueeze(-1), columns] = source_var[rows]
        out_noise[idx] = noise[rows]

    signal_cov = ops.signal_cov(source_var)
    chol, precision, log_scale = factorise(signal_cov, noise)
    iteration = 0
    for iteration in range(1, n_iter + 1):
        # (a copy of the batch's factors only once some sample has stopped)
        Vr = V if len(running) == n_batch else V[running]
        if keep_history:
            _record(history, type2_cost(chol, Vr, log_scale), source_var, noise)
        # Source update: S Cy S = (S V)(S V)^T.
        SV = precision @ Vr
        # l^T S l and l^T S Cy S l
        gain, fit = ops.quad_diag(precision, SV @ SV.transpose(-1, -2))
        if group_size == 1:
            ratio = torch.where(has_gain, fit.clamp(min=0) / gain.clamp(min=tiny), 0.0)
            new_source_var = source_var * ratio.sqrt()
        else:
            new_source_var = _grouped_update(source_var, fit, gain, group_size, tiny)
        peak = new_source_var.amax(-1, keepdim=True)
        threshold = max(prune_threshold or 0.0, COLLAPSED)
        new_source_var = torch.where(new_source_var < threshold * peak, 0.0, new_source_var)
        if tol:
            change = ((new_source_var - source_var).abs().sum(-1)
                      / source_var.abs().sum(-1).clamp(min=tiny))
        source_var = new_source_var
        signal_cov = ops.signal_cov(source_var)
        if noise_mode != "fixed":
            # Noise update with the new source variances and the old noise.
            _, noise_precision, _ = factorise(signal_cov, noise)
            s_diag = diagonal(noise_precision)  # S[n, n]
            scs_diag = ((noise_precision @ Vr) ** 2).sum(-1)  # (S Cy S)[n, n]
            if noise_mode == "homoscedastic":
                scs_diag = scs_diag.sum(-1, keepdim=True)
                s_diag = s_diag.sum(-1, keepdim=True)
            ratio = scs_diag.clamp(min=0) / s_diag.clamp(min=tiny)
            noise = torch.maximum(noise * ratio.sqrt(), floor[running])
        chol, precision, log_scale = factorise(signal_cov, noise)
        if not tol:
            continue
        converged = change < tol
        if not per_sample_stop:
            if bool(converged.all()):
                break
            continue
        if bool(converged.any()):
            finish(converged, precision[converged])
            keep = ~converged
            running, source_var, noise = running[keep], source_var[keep], noise[keep]
            chol, precision = chol[keep], precision[keep]
            log_scale = log_scale[keep]
            if len(running) == 0:
                break
        # drop the columns that every running sample has lost
        live = (source_var > 0).any(0)
        if live.sum() < (1 - COMPACT_FRACTION) * len(columns):
            columns, source_var, has_gain = columns[live], source_var[:, live], has_gain[live]
            ops = _PairOps(lead_field[:, columns], n_batch)
    if len(running):
        finish(torch.ones(len(running), dtype=torch.bool, device=Y.device), precision)
    if keep_history:
        _record(history, type2_cost(chol, V, log_scale), source_var, noise)
        history = {k: torch.stack(v, dim=1) for k, v in history.items()}
    else:
        history = {}
    return ChampagneResult(out_sources, out_source_var, out_noise, iteration, history)


def _grouped_update(source_var, fit, gain, group_size, tiny):
    """The source update of groups sharing one variance (``champagne``'s
    ``group_size``), repeated over each group's columns."""
    shape = source_var.shape[:-1] + (-1, group_size)
    numer = (source_var * fit.clamp(min=0).sqrt()).reshape(shape).sum(-1)
    denom = gain.reshape(shape).sum(-1).clamp(min=tiny).sqrt()
    return (numer / denom / group_size).repeat_interleave(group_size, dim=-1)


def _record(history, cost, source_var, noise):
    history["cost"].append(cost)
    history["source_var"].append(source_var)
    history["noise_var"].append(noise)
