"""The base of every source estimator: forward model, reference, scaling, score.

``X`` is sensor data ``(n_samples, n_channels, n_times)`` (MNE's decoding
convention; a 2-D ``(n_samples, n_channels)`` array is one time point per
sample) and ``predict`` returns sources ``(n_samples, n_sources, n_times)``.
The forward model is a constructor parameter; ``fit`` validates it and the
data, and stores the forward-derived state.

Estimators apply the average reference to the data when the forward model has
it (the default for every ForwardModel), and normalise each sample internally
(data by its RMS, the lead field so that ``trace(L L^T)`` equals the number of
independent channels), so they behave the same on volts (~1e-6) and on
unit-scale data: scaling ``X`` by ``c`` scales the output by ``c``.
"""

from __future__ import annotations

import numpy as np
import torch
from sklearn.base import BaseEstimator, RegressorMixin
from sklearn.utils.validation import check_is_fitted

from ._validation import check_finite_array, check_sensor_data
from .metrics import rmse
from .resolve import resolve_forward

_DTYPES = {"float64": torch.float64, "float32": torch.float32}


def _plain_zeros(shape):
    """A float64 array of zeros allocated by torch, for large outputs filled piece
    by piece: numpy asks the kernel for transparent huge pages on large arrays,
    and where the kernel compacts memory for them on a fault (THP defrag
    "madvise", a common default) filling them stalls."""
    return torch.zeros(shape, dtype=torch.float64).numpy()


class _SourceEstimator(RegressorMixin, BaseEstimator):
    """Forward handling, input checks, referencing, scaling and ``score``."""

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.three_d_array = True
        tags.target_tags.required = False
        tags.target_tags.multi_output = True
        return tags

    def _fit_forward(self, X):
        forward = resolve_forward(self.forward)
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

    @staticmethod
    def _squeeze(sources, X):
        return sources[:, :, 0] if np.ndim(X) == 2 else sources

    def score(self, X, y, sample_weight=None):
        """``1 - rMSE``: the fraction of source energy the estimate explains."""
        y = check_finite_array(y, "y", ndim=(2, 3))
        return 1.0 - rmse(y, self.predict(X))
