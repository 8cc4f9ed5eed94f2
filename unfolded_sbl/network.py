"""The unfolded Champagne network: one convex-bounding iteration per layer.

Layer k takes the source and noise variances (gamma_k, lam_k), computes the
log-domain statistics of the preprint (eq. 7)::

    a[m] = log((1/T)||Xbar[m]||^2)      b[m] = log(l_m^T S l_m)
    p[n] = log((1/T)||R[n]||^2)         q[n] = log(S[n, n])
    log gamma_{k+1} = a/2 - b/2 + c_k        log lam_{k+1} = p/2 - q/2 + d_k

and adds a learned correction ``c_k`` (source branch) and ``d_k`` (noise
branch).  Every correction's output layer starts at zero, so the untrained
network is the classical solver; the last layer is always purely classical.

The module works in normalised units: the caller passes data scaled to unit
mean power and a lead field scaled to ``trace(L L^T) = rank`` (see
``unfolded_sbl.estimators``).  The lead field is an input, not a weight, so the
MLP and attention corrections run on any cap and source space.

Numerical safety (the network fails nowhere the classical solver does not):
the model covariance is the average-referenced one of ``_champagne`` (no
structurally null direction), the N x N factorisation runs in float64 with a
Cholesky that retries failing samples with a jitter, noise variances (learned
or given) are floored relative to the data power, log-variances and features
are clamped, each correction is bounded by ``MAX_CORRECTION``, and the
corrections fade out outside the regime they were trained for
(``TRAINED_NOISE_DB``, ``TRAINED_N_TIMES``).
"""

from __future__ import annotations

import torch
from torch import nn

from ._champagne import (
    FACTOR_JITTER,
    NOISE_FLOOR,
    _PairOps,
    diagonal,
    identity_like,
    reference_projector,
    referenced_model_cov,
    safe_cholesky,
    subtract_reference,
)

CORRECTIONS = ("none", "bias", "mlp", "graph", "attention")
NOISE_CORRECTIONS = ("none", "bias", "mlp")
#: Lower clamp inside the logarithms (a clamp, not an added constant: ONNX
#: optimisers fold ``x + 1e-30`` into ``x``).
LOG_EPS = 1e-30
#: Largest learned correction per layer, in log-variance units: corrections are
#: ``MAX_CORRECTION * tanh(raw / MAX_CORRECTION)``, so one layer can move a
#: variance by at most a factor ``exp(2.0)`` (7.4x) beyond the classical update,
#: and equals the raw output near zero (the untrained network is unchanged).
MAX_CORRECTION = 2.0
#: Range of every log-variance (normalised units: unit mean data power and
#: ``trace(L L^T) = rank``): a source variance of ``exp(20)`` would explain
#: 10^6 times the data; ``exp(-69)`` is ``LOG_EPS``.  Keeps ``exp`` finite in
#: float32 whatever the corrections do.
LOG_VAR_RANGE = (-69.0, 20.0)
#: Log-features are clipped to this magnitude before entering a correction.
FEATURE_CLIP = 60.0
#: The regime the corrections were trained for (``zoo.robust_simulator_params``:
#: per-sensor SNR up to 40 dB, windows of 10 samples or more).  Outside it the
#: corrections fade out and the layer becomes the classical update: the current
#: mean noise variance relative to the data power, in dB, fades them from 1 at
#: -30 dB to 0 at -40 dB; the window length from 1 at T = 10 to 0 at T = 3 (log
#: scale).  Each pair below is (weight 0, weight 1).  Noise-free and
#: near-noise-free data (where the classical solver is already close to exact and
#: learned corrections were seen to oscillate) and windows of a few samples
#: (rank-deficient beyond the training data) are solved classically.
TRAINED_NOISE_DB = (-40.0, -30.0)
TRAINED_N_TIMES = (3.0, 10.0)
#: The corrections (MLPs, attention) run in float32 whatever the solver's dtype
#: (:meth:`UnfoldedChampagne.cast`): torch's float64 GELU on a CPU is many times
#: slower than float32, and the corrections' inputs are clipped log-variances, far
#: coarser than float32's resolution; onnxruntime has no float64 Erf anyway.
CORRECTION_DTYPE = torch.float32


class PointwiseMLP(nn.Module):
    """Small MLP applied to every source (or sensor) independently."""

    def __init__(self, n_features, hidden=32):
        super().__init__()
        self.hidden = nn.Linear(n_features, hidden)
        self.out = nn.Linear(hidden, 1)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, features):  # (B, M, F) -> (B, M)
        # as one 2-D matrix of rows: the linear layers then export as Gemm, with
        # the bias fused, instead of MatMul and a broadcast Add
        rows = features.reshape(-1, features.shape[-1])
        out = self.out(nn.functional.gelu(self.hidden(rows)))
        return out.reshape(features.shape[:-1])


class SourceAttention(nn.Module):
    """Linear(F, d) + LayerNorm -> self-attention (residual) -> row-wise MLP.

    ``n_keys=None`` is the paper's global attention: every source attends to every
    source, O(M^2) per layer.  With ``n_keys=k`` every source attends to the k
    sources that the classical update of this layer makes largest in its sample
    (largest ``a - b``, the log of ``gamma * sqrt(fit / gain)`` up to a factor 2),
    O(M k): the active candidates, which are what a source's correction needs to
    see, at about the cost of the pointwise MLP for k of a few dozen.  (The
    current variance would not do: at the first layer every source has the
    same, and the choice would be arbitrary.)
    """

    def __init__(self, n_features, dim=16, heads=2, hidden=32, n_keys=None):
        super().__init__()
        self.n_keys = n_keys
        self.embed = nn.Linear(n_features, dim)
        self.norm = nn.LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.mlp = PointwiseMLP(dim, hidden)

    def forward(self, features):
        n_batch, n_sources = features.shape[:2]
        # row-wise layers on one 2-D matrix of rows (Gemm with the bias fused in a
        # graph, instead of a 3-D MatMul and a broadcast Add)
        h = self.norm(self.embed(features.reshape(-1, features.shape[-1])))
        h = h.reshape(n_batch, n_sources, -1)
        return self.mlp(h + self._attend(h, self._keys(h, features)))

    def _keys(self, h, features):
        """The tokens attended to: all of ``h``, or its ``n_keys`` rows of largest
        classical update per sample (all rows when there are not more of them)."""
        if self.n_keys is None or h.shape[1] <= self.n_keys:
            return h
        # centred a - b: the classical log-update of each source, relative to its sample
        score = features[..., 0] - features[..., 1]
        top = score.topk(self.n_keys, dim=1).indices
        return h.gather(1, top.unsqueeze(-1).expand(-1, -1, h.shape[-1]))

    def _attend(self, h, keys):
        """``nn.MultiheadAttention`` of ``h`` over ``keys`` with this module's weights,
        written out in the batch-first layout: projections as 2-D products, then
        ``scaled_dot_product_attention`` (never materialises the sources x keys
        weights) or, in an exported graph
        (which has no fused kernel), the same as plain products and a softmax.  The
        generic path of ``nn.MultiheadAttention`` works sequence-first and costs
        exported graphs transposes and 3-D bias adds."""
        attn = self.attn
        dim, heads = attn.embed_dim, attn.num_heads
        n_batch = h.shape[0]
        w_q, w_k, w_v = attn.in_proj_weight.split(dim)
        b_q, b_k, b_v = attn.in_proj_bias.split(dim)

        def heads_of(x, weight, bias):  # (B, n, dim) -> (B, heads, n, dim / heads)
            rows = nn.functional.linear(x.reshape(-1, dim), weight, bias)
            return rows.reshape(n_batch, -1, heads, dim // heads).transpose(1, 2)

        q, k, v = heads_of(h, w_q, b_q), heads_of(keys, w_k, b_k), heads_of(keys, w_v, b_v)
        if torch.onnx.is_in_onnx_export():
            weights = torch.softmax((q @ k.transpose(-1, -2)) * (dim // heads) ** -0.5, -1)
            out = weights @ v
        else:
            out = nn.functional.scaled_dot_product_attention(q, k, v)
        out = out.transpose(1, 2).reshape(-1, dim)
        return nn.functional.linear(out, attn.out_proj.weight, attn.out_proj.bias).reshape(
            h.shape)


#: Local statistics that the graph correction also averages over each source's
#: mesh neighbourhood (the centred a, b and log gamma; not the context levels).
N_LOCAL = 3


class GraphCorrection(PointwiseMLP):
    """Pointwise MLP on each source's features and on their kernel-weighted mean
    over its cortical neighbourhood (``unfolded_sbl.forward.mesh_neighbourhoods``,
    defined in millimetres).

    The neighbourhood says whether a source's activity belongs to an extended
    patch or stands alone, which no pointwise feature can tell.  It costs one
    sparse (sources x sources) product, O(M k), per layer beside the O(N^2 M)
    solver; the neighbourhoods are inputs, like the lead field, so one set of
    weights runs on any source space.
    """

    def __init__(self, n_features, hidden=32):
        super().__init__(n_features + N_LOCAL, hidden)

    def forward(self, features, neighbours=None):
        if neighbours is None:
            raise ValueError("the graph correction needs neighbours=(index, weight) "
                             "(unfolded_sbl.forward.mesh_neighbourhoods)")
        local = features[..., :N_LOCAL]
        n_batch, n_sources = local.shape[:2]
        # sources first: (M, B * 3), so that one product (or one gather of whole
        # rows) smooths every sample and statistic at once
        rows = local.transpose(0, 1).reshape(n_sources, -1)
        smoothed = _smooth_rows(rows, neighbours)
        smoothed = smoothed.reshape(n_sources, n_batch, N_LOCAL).transpose(0, 1)
        return super().forward(torch.cat([features, smoothed - local], dim=-1))


def neighbour_matrix(index, weight, dtype):
    """The kernel-weighted neighbourhoods ``(index, weight)`` (M, k) as a sparse
    (M, M) matrix whose row m holds source m's weights: the graph correction's
    smoothing is then one sparse product, much faster in torch than gathering
    the (M, k, B * 3) neighbour values.  Padding entries
    (weight 0) are summed into their source's own entry by ``coalesce``."""
    n_sources, n_neighbours = index.shape
    rows = torch.arange(n_sources, device=index.device).repeat_interleave(n_neighbours)
    return torch.sparse_coo_tensor(
        torch.stack([rows, index.reshape(-1)]), weight.reshape(-1).to(dtype),
        (n_sources, n_sources), check_invariants=True).coalesce()


def _smooth_rows(rows, neighbours):
    """Kernel-weighted neighbourhood means of ``rows`` (M, C): by one sparse
    product when ``neighbours`` is the :func:`neighbour_matrix` (torch), by a
    gather of whole rows when it is ``(index, weight[, distance])`` (exported
    graphs: ONNX has no sparse product; a gather along the middle axis would copy
    3 values at a time, slow in onnxruntime).  The gathered rows are weighted by a
    batched (1, k) x (k, C) product per source rather than multiplied and summed,
    which would write a weighted copy of all (M, k, C) values first."""
    if torch.is_tensor(neighbours):
        return torch.sparse.mm(neighbours.to(rows.dtype), rows)
    index, weight = neighbours[:2]
    n_sources, n_neighbours = index.shape
    gathered = rows[index.reshape(-1)].reshape(n_sources, n_neighbours, -1)
    return torch.matmul(weight.to(rows.dtype).unsqueeze(1), gathered).squeeze(1)


def pointwise_to_graph(state_dict):
    """Weights of a pointwise-MLP source correction as those of a graph correction
    that computes the same function (zero weights on the neighbourhood inputs):
    the graph model starts exactly where the MLP model is."""
    return upgrade_state_dict(state_dict, width=N_FEATURES + N_LOCAL,
                              prefix="source_corrections.")


class BiasCorrection(nn.Module):
    """Input-free per-source (or per-sensor) bias; tied to its size."""

    def __init__(self, size):
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(size))

    def forward(self, features):
        if features.shape[1] != self.bias.shape[0]:
            raise ValueError(
                f"the bias correction was built for {self.bias.shape[0]} sources/sensors "
                f"but got {features.shape[1]}; bias models are tied to one forward model "
                "(use correction='mlp' or 'attention' to change cap or source space)")
        return self.bias.expand(features.shape[0], -1)


def _make_correction(kind, n_features, size, attention_keys=None, units=32):
    if kind == "none":
        return None
    if kind == "bias":
        return BiasCorrection(size)
    if kind == "mlp":
        return PointwiseMLP(n_features, units)
    if kind == "graph":
        return GraphCorrection(n_features, units)
    return SourceAttention(n_features, hidden=units, n_keys=attention_keys)


#: Inputs of every correction: three centred local log-statistics and two
#: per-sample context levels (see :func:`_features`).
N_FEATURES = 5
#: Models saved before the context levels had three inputs; loading pads their
#: first layer with zero columns, which leaves their function unchanged.
LEGACY_N_FEATURES = 3


def _features(context, *columns):
    """Correction inputs (B, K, F): per-sample centred log-statistics, then the
    sample's context levels (B, 2), the same for every source or sensor.

    Centring makes the local statistics scale-free but hides the regime a
    sample is in; the context levels give it back: the log mean noise variance
    and the log mean signal variance per channel, both relative to the data
    power (normalised units), i.e. the current SNR estimate.
    """
    stacked = torch.stack(columns, dim=-1)
    centred = stacked - stacked.mean(dim=1, keepdim=True)
    levels = context.unsqueeze(1).expand(-1, stacked.shape[1], -1)
    return torch.cat([centred, levels], dim=-1).clamp(-FEATURE_CLIP, FEATURE_CLIP)


def _context(noise, signal_cov):
    """Per-sample (log mean noise variance, log mean signal variance), (B, 2)."""
    noise_level = torch.log(noise.mean(-1).clamp(min=LOG_EPS))
    signal_level = torch.log((diagonal(signal_cov).mean(-1)).clamp(min=LOG_EPS))
    return torch.stack([noise_level, signal_level], dim=-1)


def _validity(noise, n_times, previous=None):
    """Per-sample weight (B, 1) of the corrections: 1 inside the trained regime,
    fading to 0 outside it (``TRAINED_NOISE_DB``, ``TRAINED_N_TIMES``); a fixed
    rule, so no gradient flows through it.  It never grows again along the
    layers (``previous``): once a sample's noise estimate has left the trained
    range, the rest of its layers stay classical."""
    lo, hi = TRAINED_NOISE_DB
    noise_db = 10.0 * torch.log10(noise.mean(-1, keepdim=True).clamp(min=LOG_EPS))
    by_noise = ((noise_db - lo) / (hi - lo)).clamp(0.0, 1.0)
    if previous is not None:
        by_noise = torch.minimum(by_noise, previous)
    t_lo, t_hi = TRAINED_N_TIMES
    by_length = (torch.log(n_times / t_lo) / torch.log(n_times * 0 + t_hi / t_lo)).clamp(0.0,
                                                                                          1.0)
    return (by_noise * by_length).detach(), by_noise.detach()


def upgrade_state_dict(state_dict, width=N_FEATURES, prefix=""):
    """Pad the first layer of corrections saved with fewer inputs (``LEGACY_N_FEATURES``,
    or pointwise weights loaded into a wider correction) with zero columns, which
    leaves their function unchanged."""
    upgraded = {}
    for key, value in state_dict.items():
        if (key.startswith(prefix) and key.endswith(("hidden.weight", "embed.weight"))
                and "mlp." not in key and value.dim() == 2
                and value.shape[1] in (LEGACY_N_FEATURES, N_FEATURES)
                and value.shape[1] < width):
            pad = value.new_zeros(value.shape[0], width - value.shape[1])
            value = torch.cat([value, pad], dim=1)
        upgraded[key] = value
    return upgraded


def widen_corrections(state_dict, units, random_state=0):
    """Weights of corrections with ``units`` hidden units that compute the same
    function as ``state_dict``'s narrower ones: the added hidden units get
    ``nn.Linear``'s random initialisation and zero output weights, so the wider
    network starts exactly where the narrow one is and can learn with the new
    units (zero input weights would leave them without gradient)."""
    generator = torch.Generator().manual_seed(int(random_state))
    widened = dict(state_dict)
    for key, value in state_dict.items():
        if not key.endswith("hidden.weight") or value.shape[0] >= units:
            continue
        prefix = key[:-len("hidden.weight")]
        n_new, fan_in = units - value.shape[0], value.shape[1]
        bound = 1.0 / fan_in ** 0.5

        def uniform(*shape, like=value):
            draw = torch.rand(*shape, generator=generator, dtype=torch.float64)
            return ((2 * draw - 1) * bound).to(like.dtype)

        widened[key] = torch.cat([value, uniform(n_new, fan_in)])
        bias = state_dict[prefix + "hidden.bias"]
        widened[prefix + "hidden.bias"] = torch.cat([bias, uniform(n_new, like=bias)])
        out = state_dict[prefix + "out.weight"]
        widened[prefix + "out.weight"] = torch.cat([out, out.new_zeros(out.shape[0], n_new)],
                                                   dim=1)
    return widened


def _gram(SY, n_times):
    """``(S Y)(S Y)^T / T`` = ``S Cy S``."""
    return SY @ SY.transpose(-1, -2) / n_times


def _bounded_exp(log_var):
    return torch.exp(log_var.clamp(*LOG_VAR_RANGE))


class UnfoldedChampagne(nn.Module):
    """K unfolded convex-bounding layers with learned corrections.

    Parameters
    ----------
    n_layers : int
    correction : {"none", "bias", "mlp", "graph", "attention"}
        Source-branch correction.
    noise_correction : {"none", "bias", "mlp"}
        Noise-branch correction (used when ``learn_noise``).
    learn_noise : bool
        Learn per-sensor noise variances; False keeps the given noise fixed.
    n_sources, n_channels : int | None
        Sizes, required by the bias corrections only.
    init_source_var, init_noise_var : float
        Starting variances (normalised units), as in ``ClassicalCB``.
    prune_threshold : float | None
        Hard threshold after each source update.
    attention_keys : int | None
        Sources each source attends to in the attention correction: all of them
        (None, the paper's) or the ``attention_keys`` of largest classical update.
    correction_units : int
        Hidden units of every correction's MLP (source and noise branches).
    """

    def __init__(self, n_layers=25, correction="mlp", noise_correction="mlp",
                 learn_noise=True, n_sources=None, n_channels=None, init_source_var=1.0,
                 init_noise_var=0.1, prune_threshold=None, attention_keys=None,
                 correction_units=32):
        super().__init__()
        if correction not in CORRECTIONS:
            raise ValueError(f"correction must be one of {CORRECTIONS}, got {correction!r}")
        if noise_correction not in NOISE_CORRECTIONS:
            raise ValueError(f"noise_correction must be one of {NOISE_CORRECTIONS}, "
                             f"got {noise_correction!r}")
        if "bias" in (correction, noise_correction) and (n_sources is None or n_channels is None):
            raise ValueError("bias corrections need n_sources and n_channels")
        self.needs_neighbours = correction == "graph"
        self.n_layers = n_layers
        self.correction = correction
        self.noise_correction = noise_correction if learn_noise else "none"
        self.learn_noise = learn_noise
        self.init_source_var = float(init_source_var)
        self.init_noise_var = float(init_noise_var)
        self.prune_threshold = prune_threshold
        # The last layer stays classical: corrections for layers 0 .. K-2 only.
        self.source_corrections = nn.ModuleList(
            [_make_correction(correction, N_FEATURES, n_sources, attention_keys,
                              correction_units) or nn.Identity()
             for _ in range(n_layers - 1)])
        self.noise_corrections = nn.ModuleList(
            [_make_correction(self.noise_correction, N_FEATURES, n_channels,
                              units=correction_units) or nn.Identity()
             for _ in range(n_layers - 1)])
        self.use_inverse = False  # True while exporting (ONNX has no Cholesky)
        # products while exporting: pair (GEMM) form, or per sample (None: by batch size)
        self.export_paired = False
        self._use_corrections = True

    def cast(self, dtype=None, device=None):
        """Move to ``device`` with the solver's tensors in ``dtype`` and the
        corrections in :data:`CORRECTION_DTYPE`; returns the network."""
        self.to(device=device, dtype=dtype)
        self.source_corrections.to(CORRECTION_DTYPE)
        self.noise_corrections.to(CORRECTION_DTYPE)
        return self

    def _precision(self, signal_cov, noise, ref, eye):
        """Precision ``S`` of the referenced model (see ``_champagne``).

        The N x N factorisation runs in float64 whatever the network's dtype
        (it costs O(N^3), nothing beside the O(N^2 M) products): torch
        factorises by Cholesky, exported graphs by onnxruntime's ``Inverse``,
        and both then agree to float64 round-off.
        """
        model_cov, scale = referenced_model_cov(
            signal_cov, noise, ref, eye, jitter=FACTOR_JITTER.get(signal_cov.dtype, 1e-5))
        wide = model_cov.double()
        if self.use_inverse:
            inverse = torch.linalg.inv(wide)
        else:
            inverse = torch.cholesky_inverse(safe_cholesky(wide))
        return subtract_reference(inverse, ref.double(), scale.double()).to(signal_cov.dtype)

    def _correct(self, modules, k, features, validity, neighbours=None):
        if (not self._use_corrections or k >= len(modules)
                or isinstance(modules[k], nn.Identity)):
            return None
        module = modules[k]
        # A module may run in another precision than the solver (exported graphs
        # keep the corrections in float32: onnxruntime has no float64 Erf).
        weight_dtype = next(module.parameters()).dtype
        features = features.to(weight_dtype)
        raw = (module(features, neighbours) if isinstance(module, GraphCorrection)
               else module(features)).to(validity.dtype)
        return validity * MAX_CORRECTION * torch.tanh(raw / MAX_CORRECTION)

    def forward(self, Y, lead_field, noise_var=None, return_layers=(), trajectory=False,
                n_layers_active=None, classical=False, neighbours=None):
        """Run the K layers.

        Parameters
        ----------
        Y : tensor, shape (B, N, T)
            Normalised sensor data.
        lead_field : tensor, shape (N, M)
            Normalised lead field.
        noise_var : tensor, shape (B, N) | None
            Fixed noise variances (required when ``learn_noise`` is False),
            initial ones otherwise (default ``init_noise_var``).
        return_layers : sequence of int
            Layers (0-based, after their update) whose posterior mean is also
            returned, for deep supervision.
        trajectory : bool
            Also return the per-layer states and corrections.
        n_layers_active : int | None
            Run only the first layers (progressive training).
        classical : bool
            Skip every correction: the classical solver at the same depth (the
            reference of the classical-relative training loss).
        neighbours : (tensor (M, k) int64, tensor (M, k)) | None
            Mesh neighbourhoods ``(index, weight)`` of every source, required by
            the graph correction (``unfolded_sbl.forward.mesh_neighbourhoods``).

        Returns
        -------
        out : dict
            ``sources`` (B, M, T), ``source_var`` (B, M), ``noise_var`` (B, N),
            ``intermediate`` {layer: sources}, and with ``trajectory`` a list of
            per-layer dicts.
        """
        self._use_corrections = not classical
        n_batch, n_channels, n_times = Y.shape
        if neighbours is not None and not torch.onnx.is_in_onnx_export():
            # built once for the K layers (the graph correction's sparse product),
            # in the precision the corrections run in
            weight_dtype = next(self.source_corrections.parameters(), Y).dtype
            neighbours = neighbour_matrix(*neighbours[:2], weight_dtype)
        # Exported graphs hold both forms of the products (``export``): the pair
        # (GEMM) form and the per-sample one, chosen by batch size in the graph.
        ops = _PairOps(lead_field, n_batch, paired=self.export_paired if self.use_inverse
                       else None)
        has_gain = ((lead_field ** 2).sum(0) > 0).to(Y.dtype)
        eye = identity_like(n_channels, Y)
        ref = reference_projector(lead_field)
        n_times_t = (Y[:, :1, :] * 0 + 1).sum(-1)  # (B, 1), a tensor: dynamic in graphs
        noise_validity = None
        # floor relative to the mean data power (the data enter as S Y, never as Y Y^T)
        floor = NOISE_FLOOR.get(Y.dtype, 1e-6) * (Y ** 2).mean((-2, -1)).unsqueeze(-1)
        # ones of shape (B, M) from the inputs, so that the graph keeps both axes dynamic
        source_var = has_gain * self.init_source_var * (
            Y[:, :1, :1].reshape(-1, 1) * 0 + 1)
        if noise_var is None:
            if not self.learn_noise:
                raise ValueError("noise_var is required when learn_noise=False")
            noise_var = self.init_noise_var * (Y[:, :, 0] * 0 + 1)
        # a given (known) noise gets the same floor as learned noise
        noise = torch.maximum(noise_var, floor)
        signal_cov = ops.signal_cov(source_var)
        precision = self._precision(signal_cov, noise, ref, eye)
        wanted = set(return_layers)
        intermediate, states = {}, []
        for k in range(n_layers_active or self.n_layers):
            # S Cy S as a Gram matrix of S Y: positive semi-definite by construction,
            # unlike the product S Cy S, whose round-off made the fits of inactive
            # sources come out as large positive or negative numbers on noise-free data
            scs = _gram(precision @ Y, n_times)
            gain, fit = ops.quad_diag(precision, scs)
            log_gamma = torch.log(source_var.clamp(min=LOG_EPS))
            a = torch.log((source_var ** 2 * fit).clamp(min=LOG_EPS))
            b = torch.log(gain.clamp(min=LOG_EPS))
            context = _context(noise, signal_cov)
            validity, noise_validity = _validity(noise, n_times_t, noise_validity)
            c = self._correct(self.source_corrections, k, _features(context, a, b, log_gamma),
                              validity, neighbours)
            log_update = 0.5 * (a - b) if c is None else 0.5 * (a - b) + c
            # gamma * sqrt(fit / gain) is 0 where gamma is 0 or where round-off made
            # the fit non-positive (as in ClassicalCB): a pruned source stays pruned
            # instead of being revived by the clamped logarithms.
            alive = ((source_var > 0) & (fit > 0)).to(Y.dtype)
            source_var = has_gain * alive * _bounded_exp(log_update)
            if self.prune_threshold:
                peak = source_var.amax(-1, keepdim=True)
                source_var = source_var * (source_var >= self.prune_threshold * peak)
            signal_cov = ops.signal_cov(source_var)
            d = None
            if self.learn_noise:
                noise_precision = self._precision(signal_cov, noise, ref, eye)
                s_diag = diagonal(noise_precision)
                # diagonal of S Cy S: squared row norms of S Y (no N x N product)
                scs_diag = ((noise_precision @ Y) ** 2).sum(-1) / n_times
                log_lam = torch.log(noise.clamp(min=LOG_EPS))
                p = torch.log((noise ** 2 * scs_diag).clamp(min=LOG_EPS))
                q = torch.log(s_diag.clamp(min=LOG_EPS))
                d = self._correct(self.noise_corrections, k,
                                  _features(_context(noise, signal_cov), p, q, log_lam),
                                  validity)
                log_noise = 0.5 * (p - q) if d is None else 0.5 * (p - q) + d
                noise = torch.maximum(_bounded_exp(log_noise), floor)
            precision = self._precision(signal_cov, noise, ref, eye)
            if k in wanted or trajectory:
                sources_k = self.posterior_mean(precision, lead_field, source_var, Y)
                if k in wanted:
                    intermediate[k] = sources_k
            if trajectory:
                states.append({"sources": sources_k, "source_var": source_var, "noise_var": noise,
                               "source_correction": c, "noise_correction": d})
        sources = self.posterior_mean(precision, lead_field, source_var, Y)
        out = {"sources": sources, "source_var": source_var, "noise_var": noise,
               "intermediate": intermediate}
        if trajectory:
            out["trajectory"] = states
        return out

    @staticmethod
    def posterior_mean(precision, lead_field, source_var, Y):
        """``Gamma L^T S Y``."""
        return source_var.unsqueeze(-1) * (lead_field.T @ (precision @ Y))
