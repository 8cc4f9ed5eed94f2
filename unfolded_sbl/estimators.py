"""scikit-learn estimators for the classical solvers: ClassicalCB and SLORETA.

``X`` is sensor data ``(n_samples, n_channels, n_times)`` (MNE's decoding
convention; a 2-D ``(n_samples, n_channels)`` array is one time point per
sample) and ``predict`` returns sources ``(n_samples, n_sources, n_times)``.
The forward model is a constructor parameter; ``fit`` validates it and the
data, and stores the forward-derived state.

Both estimators apply the average reference to the data when the forward
model has it (the default for every ForwardModel), and normalise each sample
internally (data by its RMS, the lead field so that ``trace(L L^T)`` equals the
number of independent channels), so they behave the same on volts (~1e-6) and
on unit-scale data: scaling ``X`` by ``c`` scales the output by ``c``.
"""

from __future__ import annotations

import logging
import numbers

import numpy as np
import scipy.linalg
import torch
from sklearn.base import BaseEstimator, RegressorMixin
from sklearn.utils.validation import check_is_fitted

from ._champagne import champagne, row_space
from ._validation import (check_device, check_finite_array, check_noise_var,
                          check_positive_int, check_sensor_data, check_sensor_tensor)
from .forward import as_forward, source_spacing
from .metrics import rmse
from .network import TRAINED_N_TIMES

logger = logging.getLogger("unfolded_sbl")
_DTYPES = {"float64": torch.float64, "float32": torch.float32}
#: Regime check of the learned models (``regime_level_db``): samples below this
#: level are solved by the classical solver instead.  Their training data never
#: went below -38 dB (per-sensor SNR up to 40 dB); noise-free or exactly low-rank
#: data sit near -300 dB, 50 dB SNR near -56 dB.
REGIME_FLOOR_DB = -50.0
#: Learned corrections are only used on source spaces whose spacing is within
#: this factor of the training source space's (``forward.source_spacing``).
#: Measured (``python -m benchmarks.transfer``): models trained at ico3 (about
#: 10 mm) lose to ClassicalCB at ico4 (about 5 mm), where the classical error
#: itself grows beyond 10 iterations and the learned acceleration of the
#: sparsification makes it worse; there the models solve classically.
SPACING_TOLERANCE = 1.4


def acting_spacings(train_spacing, spacing_range=None):
    """(finest, coarsest) source spacing, in metres, on which learned corrections act:
    a model's recorded ``spacing_range`` where it has one (models made for denser
    source spaces, ``unfolded_sbl.zoo.DENSER_REACH``), else within
    :data:`SPACING_TOLERANCE` of its training spacing; None when neither is known."""
    if spacing_range:
        return float(spacing_range[0]), float(spacing_range[1])
    if not train_spacing:
        return None
    return train_spacing / SPACING_TOLERANCE, train_spacing * SPACING_TOLERANCE


def source_spread(source_var):
    """Fraction of the sources an estimate spreads over: the participation ratio
    ``sum(g)^2 / (M sum(g^2))`` of each sample's source variances ``g``, 1/M for one
    active source and 1 for equal variances everywhere; 0 for an all-zero sample.

    Parameters
    ----------
    source_var : ndarray, shape (n_samples, n_sources)

    Returns
    -------
    spread : ndarray, shape (n_samples,)
    """
    g = np.asarray(source_var, dtype=float)
    # scale-free: divided by each sample's peak first, so that tiny variances do not
    # underflow when squared
    peak = g.max(axis=1, keepdims=True)
    g = g / np.where(peak > 0, peak, 1.0)
    total, power = g.sum(axis=1), (g ** 2).sum(axis=1)
    return np.where(power > 0, total ** 2 / np.where(power > 0, power, 1.0), 0.0) / g.shape[1]


def regime_level_db(Y, referenced=True):
    """How much of the data is left unexplained by its dominant directions, in dB.

    Mean of the lower half of the data-covariance eigenvalues (of the
    ``min(N - 1, T)`` that can be non-zero) over the mean of all of them: about
    the noise level relative to the data power for noisy data, and -300 dB for
    noise-free or exactly low-rank data.

    Parameters
    ----------
    Y : ndarray, shape (n_samples, n_channels, n_times)
        Referenced data.
    referenced : bool
        The data are average-referenced (one eigenvalue is structurally 0).

    Returns
    -------
    level : ndarray, shape (n_samples,)
    """
    n_channels, n_times = Y.shape[1:]
    rank = max(1, min(n_channels - int(referenced), n_times))
    singular = np.linalg.svd(Y, compute_uv=False)
    eig = singular[:, :rank] ** 2
    lower = eig[:, rank // 2:].mean(axis=1)
    total = np.maximum(eig.mean(axis=1), np.finfo(float).tiny)
    return 10 * np.log10(np.maximum(lower / total, 1e-300))


def _plain_zeros(shape):
    """A float64 array of zeros allocated by torch, for large outputs filled piece
    by piece: numpy asks the kernel for transparent huge pages on large arrays,
    and where the kernel compacts memory for them on a fault (THP defrag
    "madvise", a common default) the writes stalled (one-off: 263 MB took
    370-630 ms to fill through numpy's request, about 100 ms without it)."""
    return torch.zeros(shape, dtype=torch.float64).numpy()


class _SourceEstimator(RegressorMixin, BaseEstimator):
    """Shared plumbing: forward handling, input checks, referencing, scaling."""

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.three_d_array = True
        tags.target_tags.required = False
        tags.target_tags.multi_output = True
        return tags

    def _fit_forward(self, X):
        forward = as_forward(self.forward)
        self.forward_ = forward
        self.n_features_in_ = forward.n_channels
        self.n_sources_ = forward.n_sources
        # Data get the same reference as the lead field (average, unless the
        # forward model was built without it, e.g. for pre-whitened problems).
        self.average_reference_ = forward.average_reference
        lead_field = forward.lead_field
        # trace(L L^T) = number of independent channels after scaling (N - 1 with
        # an average reference, as MNE scales its source prior).
        n_effective = forward.n_channels - int(forward.average_reference)
        self.lead_field_scale_ = float(np.sqrt((lead_field ** 2).sum() / n_effective))
        self.lead_field_ = lead_field / self.lead_field_scale_
        if X is not None:
            check_sensor_data(X, forward.n_channels)
        return self

    def _prepare(self, X):
        """Average-referenced data and per-sample RMS scale, (n, N, T) and (n,)."""
        check_is_fitted(self, "lead_field_")
        Y = check_sensor_data(X, self.n_features_in_)
        if self.average_reference_:
            Y = Y - Y.mean(axis=1, keepdims=True)
        scale = np.sqrt(np.mean(Y ** 2, axis=(1, 2)))
        self._data_power = scale ** 2  # of the last predict, for signal_level_db_
        return Y, scale

    @property
    def signal_level_db_(self):
        """ndarray, shape (n_samples,): power the last ``predict``'s source variances put
        on the sensors relative to the data's, in dB
        (:func:`unfolded_sbl.quality.signal_level_db`)."""
        from .quality import signal_level_db

        check_is_fitted(self, "source_var_")
        lead_field = self.lead_field_ * self.lead_field_scale_
        return signal_level_db(self.source_var_, lead_field, self._data_power)

    @property
    def empty_(self):
        """ndarray of bool, shape (n_samples,): samples of the last ``predict`` whose
        estimate is empty: every source pruned, no source above the noise model
        (``signal_level_db_`` below :data:`unfolded_sbl.quality.EMPTY_LEVEL_DB`)."""
        from .quality import EMPTY_LEVEL_DB

        level = self.signal_level_db_
        return ~(level >= EMPTY_LEVEL_DB) & np.isfinite(self._data_power) & (
            self._data_power > 0)

    def _network_inputs(self, X, noise_var, learn_noise):
        """Normalised data (and known noise) for a network, plus the scales to undo.

        All-zero samples get scale 1 here and ``nonzero`` False, so that their
        outputs come back as zeros.
        """
        Y, scale = self._prepare(X)
        if not learn_noise:
            noise_var = check_noise_var(noise_var, Y.shape[:2])
        elif noise_var is not None:
            raise ValueError("noise_var is only used by known-noise models")
        safe = np.where(scale > 0, scale, 1.0)
        noise = None if noise_var is None else noise_var / safe[:, None] ** 2
        return Y / safe[:, None, None], noise, safe, scale > 0

    def _outside_regime(self, Y):
        """Samples a learned model should leave to the classical solver (n,) bool:
        data outside the trained SNR regime, every sample when the source space
        is finer or coarser than the corrections act on (:func:`acting_spacings`),
        and every sample of windows of at most ``TRAINED_N_TIMES[0]`` time samples.
        ``Y`` (n, N, T) may be the data or their row space (:meth:`_on_row_space`):
        :func:`regime_level_db` gives the same levels for both."""
        if not getattr(self, "regime_check", True):
            return np.zeros(len(Y), bool)
        outside = regime_level_db(Y, self.average_reference_) < REGIME_FLOOR_DB
        # A window this short gets no corrections (they fade out below
        # TRAINED_N_TIMES[1] and are 0 from TRAINED_N_TIMES[0] down): the network is
        # the classical solver there, and its rank-1..3 covariance is where float32
        # arithmetic drifts: at T = 1 ClassicalCB in float32 and the float32 graphs
        # gave estimates 11-21 % away from float64 (one-off).  The classical solver in
        # float64 gives the same answer, exactly, in every backend and precision.
        # (A row space, T > N >= TRAINED_N_TIMES[1], is never that short.)  The
        # resolution is checked first, so that its warning is logged either way.
        if self._other_resolution() or Y.shape[-1] <= TRAINED_N_TIMES[0]:
            outside[:] = True
        return outside

    def _too_dense(self, source_var):
        """Samples (n,) bool whose learned estimate, ``source_var`` (n, M) array or
        tensor, spreads over more than ``density_ceiling`` of the sources
        (:func:`source_spread`): denser than the estimates the corrections help on,
        so the regime check solves them classically.  Never with
        ``regime_check=False`` or ``density_ceiling=None``."""
        # the resolved value where an estimator resolves it (OnnxSBLRegressor's "auto")
        ceiling = getattr(self, "density_ceiling_", getattr(self, "density_ceiling", None))
        if not getattr(self, "regime_check", True) or ceiling is None:
            return np.zeros(len(source_var), bool)
        if torch.is_tensor(source_var):  # copied to the host only when it is checked
            source_var = source_var.double().cpu().numpy()
        return source_spread(source_var) > ceiling

    def _other_resolution(self):
        """True (and logged once) when the forward model's source spacing lies outside
        the spacings the corrections act on (:func:`acting_spacings`)."""
        span = acting_spacings(getattr(self, "train_spacing_", None),
                               getattr(self, "spacing_range_", None))
        if span is None:
            return False
        spacing = source_spacing(self.forward_)
        if span[0] <= spacing <= span[1]:
            return False
        if not getattr(self, "_warned_spacing", False):
            logger.warning(
                "the learned corrections act on source spaces with %.1f-%.1f mm spacing "
                "(trained for %.1f mm); this one has %.1f mm: solving with the classical "
                "updates at the same depth (regime_check=False uses the corrections anyway)",
                1e3 * span[0], 1e3 * span[1], 1e3 * (self.train_spacing_ or 0), 1e3 * spacing)
            self._warned_spacing = True
        return True

    @staticmethod
    def _on_row_space(Y):
        """``(Yc, expand)``: networks run on the data's row space when it is shorter.

        A network sees the data only through ``S Y`` and statistics of
        ``Y Y^T / T``, so its layers on ``Yc`` (:func:`row_space`, (n, N, N))
        are those on ``Y`` (n, N, T) while their products hold N instead of T
        columns (training compresses its batches the same way);
        ``expand(sources, rows=None)`` maps the estimate of the samples ``rows``
        (a boolean mask or indices; default: all) back to the T time samples.  ``Yc`` has the
        singular values of ``Y`` up to one factor, so the regime check reads it too.
        Only for T > N >= ``TRAINED_N_TIMES[1]``, so that the corrections'
        window-length weight sees the same (full) length either way.
        """
        n_channels, n_times = Y.shape[-2:]
        if n_times <= n_channels or n_channels < TRAINED_N_TIMES[1]:
            return Y, lambda sources, rows=None: sources
        Yc, Q, shrink = row_space(torch.as_tensor(Y, dtype=torch.float64))
        back = Q.transpose(-1, -2) / shrink  # (n, N, T)

        def expand(sources, rows=None):
            every = rows is None or (np.asarray(rows).dtype == bool and np.all(rows))
            basis = back if every else back[torch.as_tensor(rows)]
            if torch.is_tensor(sources):
                return sources @ basis.to(sources.device, sources.dtype)
            # numpy arrays too through torch, whose allocator gives the (n, M, T)
            # result plain pages (see _plain_zeros)
            values = torch.from_numpy(sources)
            return (values @ basis.to(values.dtype)).numpy()

        return Yc.numpy(), expand

    def _physical(self, sources, source_var, noise_var, safe, nonzero):
        """Undo the normalisation of network outputs (numpy arrays).  ``sources`` is
        scaled in place (callers pass arrays of their own): it is the large one."""
        source_scale = safe / self.lead_field_scale_ * nonzero
        sources *= source_scale[:, None, None]
        return (sources, source_var * source_scale[:, None] ** 2,
                noise_var * (safe * nonzero)[:, None] ** 2)

    # Networks: float tensors in the units they are trained in (self.torch_dtype_).
    def _tensor(self, array, dtype=None):
        return torch.as_tensor(np.ascontiguousarray(array), dtype=dtype or self.torch_dtype_,
                               device=getattr(self, "device_", None))

    def _normalise(self, X, y=None, noise_var=None):
        """Referenced, scaled tensors (Y, X, noise) as the network sees them.

        ``X`` is an array (validated like any input) or a tensor, e.g. a batch a
        ``Simulator(device=...)`` built on the device, which stays there (no host
        round trip).  The arithmetic runs in float64, then casts to the network's
        dtype.
        """
        check_is_fitted(self, "lead_field_")
        X = (check_sensor_tensor(X, self.n_features_in_) if torch.is_tensor(X)
             else check_sensor_data(X, self.n_features_in_))
        device = getattr(self, "device_", None)

        def wide(value):
            return torch.as_tensor(value if torch.is_tensor(value) else np.asarray(value),
                                   dtype=torch.float64, device=device)

        Y = wide(X)
        if self.average_reference_:
            Y = Y - Y.mean(dim=1, keepdim=True)
        scale = Y.pow(2).mean(dim=(1, 2)).sqrt()
        if bool((scale == 0).any()):
            raise ValueError("X contains all-zero samples; training needs signal")
        source_scale = scale / self.lead_field_scale_
        out = [Y / scale[:, None, None],
               None if y is None else wide(y) / source_scale[:, None, None],
               None if noise_var is None else wide(noise_var) / scale[:, None] ** 2]
        return [None if t is None else t.to(self.torch_dtype_) for t in out]

    @staticmethod
    def _squeeze(sources, X):
        return sources[:, :, 0] if np.ndim(X) == 2 else sources

    def score(self, X, y, sample_weight=None):
        """``1 - rMSE``: the fraction of source energy the estimate explains."""
        y = check_finite_array(y, "y", ndim=(2, 3))
        return 1.0 - rmse(y, self.predict(X))


class ClassicalCB(_SourceEstimator):
    """Champagne with convex-bounding updates (sparse Bayesian learning).

    Parameters
    ----------
    forward : str | ForwardModel | mne.Forward | None
        Forward model or template name (None: the embedded default).
    noise : {"learn", "homoscedastic", "known"} or array
        ``"learn"``: joint learning of per-sensor noise variances;
        ``"homoscedastic"``: one learned noise variance; ``"known"``: fixed
        noise variances passed per sample to :meth:`predict` as ``noise_var``;
        an array of shape (n_channels,) (variances) or (n_channels, n_channels)
        (covariance) fixes the noise for every sample.  Units are those of
        ``X`` squared.
    n_iter : int
        Maximum number of iterations (default 25, the paper's unfolded depth).
    tol : float
        Convergence tolerance on the relative change of the source variances;
        0 (default) always runs ``n_iter`` iterations.  Each sample stops when
        it converges (a batch does not wait for its slowest sample), and
        sources whose variance collapsed below ``1e-12`` of the sample's
        largest are dropped from the products (exact on the remaining problem;
        ``unfolded_sbl._champagne.COLLAPSED``).
    init_source_var : float
        Initial source variance in normalised units, where 1 makes the model's
        signal power equal to the data power.
    init_noise_var : float
        Initial noise variance in normalised units (fraction of the data power)
        for learned noise; default 0.1 (10 dB).
    prune_threshold : float | None
        Hard threshold: ``gamma[m] = 0`` where ``gamma[m] < prune_threshold *
        max(gamma)`` after each update.
    keep_history : bool
        Record cost, source and noise variances per iteration in ``history_``.
    dtype : {"float64", "float32"}
        Precision of the solver's arithmetic: float64 (default) is exact at
        every SNR; float32 is faster but its round-off regularises above about
        25 dB SNR.
    batch_size : int
        Samples solved together (memory grows as batch_size * n_channels *
        n_sources).
    device : str
        Torch device of the solver: ``"cpu"`` (default), ``"cuda"`` or
        ``"cuda:N"`` when torch sees a GPU (a ValueError says so otherwise).
        The batch stays on the device for all iterations; results come back as
        numpy arrays.

    Attributes
    ----------
    forward_ : ForwardModel
    n_features_in_ : int
        Number of channels.
    source_var_ : ndarray, shape (n_samples, n_sources)
        Source variances (units of the output squared) of the last ``predict``.
    noise_var_ : ndarray, shape (n_samples, n_channels)
        Noise variances of the last ``predict``.
    n_iter_ : int
        Iterations run in the last ``predict``.
    history_ : dict of ndarray
        With ``keep_history=True``: ``cost`` (n_samples, n_iter_ + 1) in
        normalised units (data scaled to unit power, constant offset dropped),
        ``source_var`` (n_samples, n_iter_ + 1, n_sources) and ``noise_var``.

    Notes
    -----
    All-zero data give zero sources and variances.  Sources whose lead-field
    column is zero get zero variance.

    Examples
    --------
    >>> import unfolded_sbl as us
    >>> fwd = us.load_forward()                    # fsaverage ico3, 64 channels
    >>> data = us.simulate(fwd, 4, random_state=0)
    >>> est = us.ClassicalCB(forward=fwd, noise="learn", n_iter=25).fit()
    >>> sources = est.predict(data.sensors)
    >>> sources.shape, est.noise_var_.shape
    ((4, 1284, 100), (4, 64))
    >>> bool(us.rmse(data.sources, sources) < 1.0)
    True

    Its depth chosen by cross-validation on simulated data, as any estimator:

    >>> from sklearn.model_selection import GridSearchCV
    >>> search = GridSearchCV(us.ClassicalCB(fwd), {"n_iter": [5, 25]},
    ...                       scoring=us.rmse_scorer, cv=2)
    >>> search.fit(data.sensors, data.sources).best_params_
    {'n_iter': ...}
    """

    def __init__(self, forward=None, noise="learn", n_iter=25, tol=0.0,
                 init_source_var=1.0, init_noise_var=0.1, prune_threshold=None,
                 keep_history=False, dtype="float64", batch_size=64, device="cpu"):
        self.forward = forward
        self.noise = noise
        self.n_iter = n_iter
        self.tol = tol
        self.init_source_var = init_source_var
        self.init_noise_var = init_noise_var
        self.prune_threshold = prune_threshold
        self.keep_history = keep_history
        self.dtype = dtype
        self.batch_size = batch_size
        self.device = device

    def fit(self, X=None, y=None):
        """Validate parameters and forward model (``X`` optional, ``y`` ignored)."""
        self._check_params()
        self.device_ = check_device(self.device)
        self._fit_forward(X)
        self.noise_mode_, self.fixed_noise_ = self._check_noise()
        return self

    def _check_params(self):
        check_positive_int(self.n_iter, "n_iter")
        check_positive_int(self.batch_size, "batch_size")
        if self.dtype not in _DTYPES:
            raise ValueError(f"dtype must be one of {list(_DTYPES)}, got {self.dtype!r}")
        for name in ("init_source_var", "init_noise_var"):
            value = getattr(self, name)
            if not isinstance(value, numbers.Real) or not np.isfinite(value) or value <= 0:
                raise ValueError(f"{name} must be a positive number, got {value!r}")
        if not isinstance(self.tol, numbers.Real) or not self.tol >= 0:
            raise ValueError(f"tol must be a number >= 0, got {self.tol!r}")
        if self.prune_threshold is not None and not 0 <= self.prune_threshold < 1:
            raise ValueError(f"prune_threshold must be in [0, 1) or None, "
                             f"got {self.prune_threshold!r}")

    def _check_noise(self):
        noise, n = self.noise, self.n_features_in_
        if isinstance(noise, str):
            if noise not in ("learn", "homoscedastic", "known"):
                raise ValueError(f"noise must be 'learn', 'homoscedastic', 'known' or an "
                                 f"array, got {noise!r}")
            return noise, None
        noise = check_finite_array(noise, "noise", ndim=(1, 2),
                                   shape_doc=f"({n},) or ({n}, {n})")
        if noise.shape not in ((n,), (n, n)):
            raise ValueError(f"noise must have shape ({n},) or ({n}, {n}), got {noise.shape}")
        if noise.ndim == 1 and np.any(noise <= 0):
            raise ValueError("noise variances must be positive")
        if noise.ndim == 2:
            if not np.allclose(noise, noise.T):
                raise ValueError("noise covariance must be symmetric")
            if np.linalg.eigvalsh(noise).min() <= 0:
                raise ValueError("noise covariance must be positive definite")
        return "array", noise

    def predict(self, X, noise_var=None):
        """Posterior-mean sources.

        Parameters
        ----------
        X : array-like, shape (n_samples, n_channels, n_times) or (n_samples, n_channels)
        noise_var : array-like, shape (n_samples, n_channels) | None
            Known per-sample noise variances; required with ``noise="known"``.

        Returns
        -------
        sources : ndarray, shape (n_samples, n_sources, n_times) (or 2-D like ``X``)
        """
        Y, scale = self._prepare(X)
        n_samples, n_channels = Y.shape[:2]
        noise_var = self._known_noise(noise_var, n_samples)
        shape = (n_samples, self.n_sources_, Y.shape[2])
        sources = None  # the solver's own output when one batch holds every sample
        self.source_var_ = np.zeros((n_samples, self.n_sources_))
        self.noise_var_ = np.zeros((n_samples, n_channels))
        histories = []
        active = np.flatnonzero(scale > 0)  # all-zero samples keep zero output
        self.n_iter_ = 0
        for start in range(0, len(active), self.batch_size):
            idx = active[start:start + self.batch_size]
            batch_noise = None
            if noise_var is not None:
                batch_noise = noise_var[idx] / (scale[idx] ** 2).reshape(
                    (-1,) + (1,) * (noise_var.ndim - 1))
            result = self._solve(Y[idx] / scale[idx, None, None], batch_noise)
            # Undo the normalisation: X ~ s_y / s_L, variances ~ (s_y / s_L)^2, s_y^2.
            source_scale = scale[idx] / self.lead_field_scale_
            # scaled in place: (B, M, T) outputs are large, and every fresh copy of
            # one costs its page faults
            batch_sources = result.sources.double().cpu()
            batch_sources.mul_(torch.as_tensor(source_scale, dtype=batch_sources.dtype)
                               .reshape(-1, 1, 1))
            if len(idx) == n_samples:
                sources = batch_sources.numpy()
            else:
                sources = _plain_zeros(shape) if sources is None else sources
                sources[idx] = batch_sources.numpy()
            self.source_var_[idx] = result.source_var.double().cpu().numpy() * (
                source_scale[:, None] ** 2)
            noise_out = result.noise_var.double().cpu().numpy()
            if noise_out.ndim == 3:
                noise_out = np.diagonal(noise_out, axis1=1, axis2=2)
            self.noise_var_[idx] = noise_out * scale[idx, None] ** 2
            self.n_iter_ = max(self.n_iter_, result.n_iter)
            if self.keep_history:
                histories.append((idx, result.history, source_scale, scale[idx]))
        if self.keep_history:
            self.history_ = self._merge_history(histories, n_samples)
        return self._squeeze(_plain_zeros(shape) if sources is None else sources, X)

    def _known_noise(self, noise_var, n_samples):
        if self.noise_mode_ == "known":
            return check_noise_var(noise_var, (n_samples, self.n_features_in_))
        if noise_var is not None:
            raise ValueError("noise_var is only used with noise='known'")
        if self.noise_mode_ == "array":
            return np.broadcast_to(self.fixed_noise_, (n_samples,) + self.fixed_noise_.shape)
        return None

    def _solve(self, Y, noise_var):
        dtype = _DTYPES[self.dtype]
        n_batch = len(Y)
        device = self.device_
        Y_t = torch.as_tensor(Y, dtype=dtype, device=device)
        lead_field = torch.as_tensor(self.lead_field_, dtype=dtype, device=device)
        source_var = torch.full((n_batch, self.n_sources_), float(self.init_source_var),
                                dtype=dtype, device=device)
        if noise_var is None:
            noise = torch.full((n_batch, self.n_features_in_), float(self.init_noise_var),
                               dtype=dtype, device=device)
            mode = self.noise_mode_
        else:
            noise = torch.as_tensor(np.ascontiguousarray(noise_var), dtype=dtype,
                                    device=device)
            mode = "fixed"
        with torch.no_grad():
            return champagne(Y_t, lead_field, source_var, noise, noise_mode=mode,
                             n_iter=self.n_iter, tol=self.tol,
                             prune_threshold=self.prune_threshold,
                             keep_history=self.keep_history)

    def _merge_history(self, parts, n_samples):
        n_steps = max(h["cost"].shape[1] for _, h, _, _ in parts) if parts else 0
        history = {"cost": np.full((n_samples, n_steps), np.nan),
                   "source_var": np.zeros((n_samples, n_steps, self.n_sources_)),
                   "noise_var": np.zeros((n_samples, n_steps, self.n_features_in_))}
        for idx, h, source_scale, data_scale in parts:
            steps = h["cost"].shape[1]
            history["cost"][idx, :steps] = h["cost"].double().cpu().numpy()
            history["source_var"][idx, :steps] = (h["source_var"].double().cpu().numpy()
                                                  * source_scale[:, None, None] ** 2)
            noise = h["noise_var"].double().cpu().numpy()
            if noise.ndim == 4:
                noise = np.diagonal(noise, axis1=2, axis2=3)
            history["noise_var"][idx, :steps] = noise * data_scale[:, None, None] ** 2
        return history


class SLORETA(_SourceEstimator):
    """Standardised low-resolution electromagnetic tomography (sLORETA).

    The minimum-norm operator ``K = L^T (L L^T + alpha * I)^-1`` uses the lead
    field scaled to ``trace(L L^T) = rank`` (n_channels - 1 with the average
    reference), so ``alpha`` is relative to the mean signal power exactly like
    MNE's ``lambda2 = 1 / SNR^2`` with white noise.  White sensor
    noise (after average reference) is assumed.

    Parameters
    ----------
    forward : str | ForwardModel | mne.Forward | None
        Forward model or template name (None: the embedded default).
    alpha : float
        Regularisation (default 1/9, MNE's default for SNR 3).
    output : {"standardized", "current"}
        ``"standardized"`` (default): ``(K y)_m / sqrt(R_mm)`` with the
        resolution matrix ``R = K L``; dimensionless and scaled like MNE's
        ``apply_inverse(method="sLORETA")`` up to one global factor (the paper's
        baseline).  ``"current"``: the minimum-norm current estimate in the
        units of ``X`` divided by the lead-field units (A m for volts).

    Examples
    --------
    >>> import unfolded_sbl as us
    >>> fwd = us.load_forward()
    >>> data = us.simulate(fwd, 2, random_state=0)
    >>> us.SLORETA(forward=fwd).fit().predict(data.sensors).shape
    (2, 1284, 100)

    Its standardised map has no current units: score it by its support and
    location (F1, EMD), or in currents with ``output="current"``:

    >>> current = us.SLORETA(forward=fwd, output="current").fit().predict(data.sensors)
    >>> bool(us.rmse(data.sources, current) < 10)
    True
    """

    def __init__(self, forward=None, alpha=1.0 / 9.0, output="standardized"):
        self.forward = forward
        self.alpha = alpha
        self.output = output

    def fit(self, X=None, y=None):
        """Compute the inverse operator (``X`` optional, ``y`` ignored)."""
        if not isinstance(self.alpha, numbers.Real) or not self.alpha > 0:
            raise ValueError(f"alpha must be a positive number, got {self.alpha!r}")
        if self.output not in ("standardized", "current"):
            raise ValueError(f"output must be 'standardized' or 'current', got {self.output!r}")
        self._fit_forward(X)
        L = self.lead_field_
        gram = L @ L.T + self.alpha * np.eye(L.shape[0])
        self.inverse_operator_ = scipy.linalg.solve(gram, L, assume_a="pos").T  # (M, N)
        resolution_diag = np.sum(self.inverse_operator_ * L.T, axis=1)
        self.noise_norm_ = 1.0 / np.sqrt(np.maximum(resolution_diag, np.finfo(float).tiny))
        self.noise_norm_[resolution_diag <= 0] = 0.0
        return self

    def predict(self, X):
        """Source estimate, shape (n_samples, n_sources, n_times) (or 2-D like ``X``)."""
        Y, _ = self._prepare(X)
        sources = np.einsum("mn,bnt->bmt", self.inverse_operator_, Y, optimize=True)
        if self.output == "standardized":
            sources *= self.noise_norm_[None, :, None]
        else:
            sources /= self.lead_field_scale_
        return self._squeeze(sources, X)
