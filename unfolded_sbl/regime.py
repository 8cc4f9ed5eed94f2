"""The regime check of the learned models, as tensor math.

Learned corrections are trusted only where they were trained: data with noise
(not noise-free or exactly low-rank), source spaces of the spacing the
corrections act on, and estimates no denser than those they help on.  Samples
outside go to the classical updates.  These functions measure those three
things in torch (arrays in, arrays out), so that an exported graph computes them
as the Python estimators do;
:class:`unfolded_sbl._network_base._NetworkEstimator` applies them.
"""

from __future__ import annotations

import math

import numpy as np
import torch

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
    source_var : ndarray | Tensor, shape (n_samples, n_sources)

    Returns
    -------
    spread : ndarray | Tensor, shape (n_samples,)
        A tensor for a tensor (exported graphs compute it so), else an array.
    """
    if not torch.is_tensor(source_var):
        return source_spread(torch.as_tensor(np.asarray(source_var, dtype=float))).numpy()
    g = source_var.to(torch.float64)
    # scale-free: divided by each sample's peak first, so that tiny variances do not
    # underflow when squared; means rather than sums, so that an exported graph
    # needs no source count
    peak = g.amax(dim=1, keepdim=True)
    g = g / torch.where(peak > 0, peak, torch.ones_like(peak))
    mean, power = g.mean(dim=1), g.pow(2).mean(dim=1)
    spread = mean.pow(2) / torch.where(power > 0, power, torch.ones_like(power))
    return torch.where(power > 0, spread, torch.zeros_like(spread))


#: Subspace iterations of :func:`regime_level_db`: the strong directions converge in
#: a few; the rest let the level follow the eigenvalues' where the upper half ends
#: among noise eigenvalues of nearly equal size (``tests/test_onnx_contract.py``).
SUBSPACE_ITERATIONS = 16
#: Ridge added to the trace-normalised covariance that :func:`regime_level_db`
#: iterates on: it keeps every matrix the iterations invert well conditioned (a
#: ridge moves no eigenvector; it only slows the iterations among eigenvalues below it).
LEVEL_RIDGE = 1e-6


def regime_level_db(Y, referenced=True):
    """How much of the data is left unexplained by its dominant directions, in dB.

    Mean of the lower half of the data-covariance eigenvalues (of the
    ``min(N - 1, T)`` that can be non-zero) over the mean of all of them: about
    the noise level relative to the data power for noisy data, and round-off for
    noise-free or exactly low-rank data, far below :data:`REGIME_FLOOR_DB`.

    The upper half's directions are found by subspace iteration on the
    covariance (normalised by its trace, plus a small ridge) and the lower half's
    energy is what the data keep outside them: matrix products and small
    inverses only, so that an exported graph computes the same level with
    standard operators and onnxruntime's ``Inverse``.

    Parameters
    ----------
    Y : ndarray | Tensor, shape (n_samples, n_channels, n_times)
        Referenced data.
    referenced : bool
        The data are average-referenced (one eigenvalue is structurally 0).

    Returns
    -------
    level : ndarray | Tensor, shape (n_samples,)
        A tensor for a tensor (exported graphs compute it so), else an array.
    """
    if not torch.is_tensor(Y):
        return regime_level_db(torch.as_tensor(np.asarray(Y, dtype=float)),
                               referenced).numpy()
    Y = Y.to(torch.float64)
    # sizes as tensors, so that an exported graph keeps them dynamic
    shape = torch._shape_as_tensor(Y)
    n_channels, n_times = shape[1], shape[2]
    rank = torch.minimum(n_channels - int(referenced), n_times).clamp(min=1)
    n_upper = torch.div(rank, 2, rounding_mode="floor").clamp(min=1)
    trace = Y.pow(2).sum(dim=(1, 2))
    signal = trace > 0
    Y = Y / torch.where(signal, trace, torch.ones_like(trace)).sqrt()[:, None, None]
    channels = torch.arange(n_channels)
    eye = (channels[:, None] == channels[None, :]).to(torch.float64)
    cov = Y @ Y.transpose(1, 2) + LEVEL_RIDGE / n_channels.to(torch.float64) * eye
    # a fixed, smooth start (cosines over the channel index): deterministic, and
    # every EEG topography has weight on it
    i = channels.to(torch.float64)[:, None]
    j = torch.arange(n_upper, dtype=torch.float64)[None, :]
    basis = torch.cos(math.pi * (i + 0.5) * (j + 1) / n_channels.to(torch.float64))
    for _ in range(SUBSPACE_ITERATIONS):
        # normalised by the Rayleigh quotient, so the basis stays well conditioned
        image = cov @ basis
        basis = image @ torch.linalg.inv(basis.transpose(-1, -2) @ image)
    # the energy outside the basis' span, as the residual of the data's projection
    # on it: its errors are squared, so noise-free data read at round-off
    gram = basis.transpose(1, 2) @ basis
    residual = Y - basis @ (torch.linalg.inv(gram) @ (basis.transpose(1, 2) @ Y))
    lower = residual.pow(2).sum(dim=(1, 2)) / (rank - n_upper).clamp(min=1)
    level = 10 * torch.log10((lower * rank).clamp(min=1e-300))
    level = torch.where(rank > 1, level, torch.zeros_like(level))  # one eigenvalue: 0 dB
    return torch.where(signal, level, torch.full_like(level, -3000.0))
