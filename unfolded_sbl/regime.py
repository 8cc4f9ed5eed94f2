"""The regime check of the learned models, as plain array math.

Learned corrections are trusted only where they were trained: data with noise
(not noise-free or exactly low-rank), source spaces of the spacing the
corrections act on, and estimates no denser than those they help on.  Samples
outside go to the classical updates.  These functions measure those three
things; :class:`unfolded_sbl._network_base._NetworkEstimator` applies them.
"""

from __future__ import annotations

import numpy as np

#: Samples whose :func:`regime_level_db` is below this are solved by the classical
#: updates: the training data stay above it (per-sensor SNR up to 40 dB), while
#: noise-free or exactly low-rank data sit far below.
REGIME_FLOOR_DB = -50.0
#: Learned corrections are only used on source spaces whose spacing is within
#: this factor of the training source space's (``forward.source_spacing``): models
#: trained at ico3 lose to ClassicalCB at ico4 (``python -m benchmarks.transfer``),
#: where their learned acceleration of the sparsification over-sparsifies.
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
