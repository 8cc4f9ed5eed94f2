"""scikit-learn estimators for the classical solvers: ClassicalCB and SLORETA.

Both take sensor data ``(n_samples, n_channels, n_times)`` and return sources
``(n_samples, n_sources, n_times)``; their shared handling of the forward model,
the reference and the scaling is :class:`unfolded_sbl._base._SourceEstimator`.
"""

from __future__ import annotations

from numbers import Integral, Real

import numpy as np
import scipy.linalg
import torch
from sklearn.base import _fit_context
from sklearn.utils._param_validation import Interval, StrOptions

from ._base import _DTYPES, _plain_zeros, _SourceEstimator
from ._champagne import champagne
from ._validation import (
    check_device,
    check_finite_array,
    check_noise_var,
)


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
        With ``keep_history=True``: ``cost`` (n_samples, ``n_iter_`` + 1) in
        normalised units (data scaled to unit power, constant offset dropped),
        ``source_var`` (n_samples, ``n_iter_`` + 1, n_sources) and ``noise_var``.

    Notes
    -----
    All-zero data give zero sources and variances.  Sources whose lead-field
    column is zero get zero variance.  With a free-orientation forward model
    (``ForwardModel(n_orient=3)``, ``ForwardModel.from_mne(fwd,
    orientation="free")``) the three dipoles of a location share one variance,
    updated as MNE's ``gamma_map`` updates its groups; ``predict`` returns the
    three components of every location.

    References
    ----------
    .. [1] D. Wipf and S. Nagarajan, "A unified Bayesian framework for MEG/EEG source
       imaging", NeuroImage 44(3), 2009.
    .. [2] C. Cai, A. Hashemi, M. Diwakar, S. Haufe, K. Sekihara and S. Nagarajan,
       "Robust estimation of noise for electromagnetic brain imaging with the
       Champagne algorithm", NeuroImage 225, 2021.
    .. [3] A. Hashemi, C. Cai, G. Kutyniok, K.-R. Müller, S. Nagarajan and S. Haufe,
       "Unification of sparse Bayesian learning algorithms for electromagnetic brain
       imaging with the majorization minimization framework", NeuroImage 239, 2021.

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

    _parameter_constraints = {
        "forward": "no_validation",  # resolve_forward says what it accepts
        "noise": [StrOptions({"learn", "homoscedastic", "known"}), "array-like"],
        "n_iter": [Interval(Integral, 1, None, closed="left")],
        "tol": [Interval(Real, 0, None, closed="left")],
        "init_source_var": [Interval(Real, 0, None, closed="neither")],
        "init_noise_var": [Interval(Real, 0, None, closed="neither")],
        "prune_threshold": [None, Interval(Real, 0, 1, closed="left")],
        "keep_history": ["boolean"],
        "dtype": [StrOptions(set(_DTYPES))],
        "batch_size": [Interval(Integral, 1, None, closed="left")],
        "device": [str],
    }

    @_fit_context(prefer_skip_nested_validation=True)
    def fit(self, X=None, y=None):
        """Validate parameters and forward model (``X`` optional, ``y`` ignored)."""
        self.device_ = check_device(self.device)
        self._fit_forward(X)
        self.noise_mode_, self.fixed_noise_ = self._check_noise()
        return self

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
                             keep_history=self.keep_history,
                             group_size=getattr(self.forward_, "n_orient", 1))

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

    References
    ----------
    .. [1] R. D. Pascual-Marqui, "Standardized low-resolution brain electromagnetic
       tomography (sLORETA): technical details", Methods Find. Exp. Clin. Pharmacol.
       24 Suppl D, 2002.

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

    _parameter_constraints = {
        "forward": "no_validation",  # resolve_forward says what it accepts
        "alpha": [Interval(Real, 0, None, closed="neither")],
        "output": [StrOptions({"standardized", "current"})],
    }

    @_fit_context(prefer_skip_nested_validation=True)
    def fit(self, X=None, y=None):
        """Compute the inverse operator (``X`` optional, ``y`` ignored)."""
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
