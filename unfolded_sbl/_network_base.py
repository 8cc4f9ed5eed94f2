"""The base of the learned estimators: normalisation and the one regime check.

:class:`_NetworkEstimator` adds to the classical base what every network needs,
whatever runs it (torch or onnxruntime): the data and noise scaled as the
network was trained, the row-space shortcut for long windows, the way back to
physical units, and :meth:`_NetworkEstimator._with_regime_check`, the single
place where samples outside the trained regime go to the classical updates.
"""

from __future__ import annotations

import logging

import numpy as np
import torch
from sklearn.utils.validation import check_is_fitted

from ._base import _SourceEstimator
from ._champagne import row_space
from ._validation import check_noise_var, check_sensor_data, check_sensor_tensor
from .forward import source_spacing
from .network import TRAINED_N_TIMES
from .regime import REGIME_FLOOR_DB, acting_spacings, regime_level_db, source_spread

logger = logging.getLogger("unfolded_sbl")


class _NetworkEstimator(_SourceEstimator):
    """Normalisation, row space, physical units and the regime check of networks."""

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
        # A window this short gets no corrections (they fade to 0 at
        # TRAINED_N_TIMES[0]), and its rank-1..3 covariance is where float32 drifts:
        # the classical updates in float64 answer it the same in every backend.  The
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

    def _with_regime_check(self, data, run, source_var):
        """The one regime check: the network's outputs with the samples outside the
        trained regime, and those whose learned estimate is too dense, solved by the
        classical updates at the same depth; ``classical_fallback_`` marks them.

        ``data`` (n, N, T') is what the network sees (data or row space);
        ``run(rows, classical, merged)`` solves the samples ``rows`` (boolean mask)
        by the network (``classical=False``) or the classical updates, writes them
        into ``merged`` (None at first) and returns it; ``source_var(merged)`` gives
        the (n, M) source variances of every sample.
        """
        outside = self._outside_regime(data)
        merged = None
        for rows, classical in ((~outside, False), (outside, True)):
            if rows.any():
                merged = run(rows, classical, merged)
        dense = self._too_dense(source_var(merged)) & ~outside
        if dense.any():  # learned estimates denser than the corrections help on
            merged = run(dense, True, merged)
        self.classical_fallback_ = outside | dense
        return merged
