"""Source-reconstruction metrics (paper appendix B.3), batched over samples.

Arrays are ``(n_samples, n_sources, n_times)``; a 2-D array is
``(n_samples, n_sources)`` with one time point each.  Every metric returns the
mean over samples, or the per-sample values with ``average=False``.

Conventions (documented choices where the paper is silent):

* the *source map* of a sample is the temporal RMS of each source;
* support (F1) and peaks (LE) only count sources whose map exceeds
  ``threshold`` (default 0.1) times the map's own maximum;
* an all-zero estimate carries no location: EMD scores it as a uniform map,
  F1 as 0, LE as the diameter of the source space.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
from scipy.spatial.distance import cdist

from ._validation import check_finite_array

DEFAULT_THRESHOLD = 0.1


def _pair(true, est):
    true = check_finite_array(true, "true", ndim=(2, 3),
                              shape_doc="(n_samples, n_sources[, n_times])")
    est = check_finite_array(est, "est", ndim=(2, 3),
                             shape_doc="(n_samples, n_sources[, n_times])")
    if true.ndim == 2:
        true = true[:, :, None]
    if est.ndim == 2:
        est = est[:, :, None]
    if true.shape != est.shape:
        raise ValueError(f"true and est must have the same shape, got {true.shape} and "
                         f"{est.shape}")
    return true, est


def rms_map(sources):
    """Temporal RMS of every source: ``(..., n_sources, n_times)`` -> ``(..., n_sources)``."""
    return np.sqrt(np.mean(np.asarray(sources) ** 2, axis=-1))


def _maps(true, est):
    """Temporal RMS maps, (n_samples, n_sources) each; truth must be non-zero."""
    true, est = _pair(true, est)
    true_map, est_map = rms_map(true), rms_map(est)
    empty = ~np.any(true_map > 0, axis=1)
    if empty.any():
        raise ValueError(f"true sources are all zero in sample(s) {np.flatnonzero(empty)}; "
                         "the metric is undefined")
    return true_map, est_map


def _check_positions(positions, n_sources):
    positions = check_finite_array(positions, "positions", ndim=2, shape_doc="(n_sources, 3)")
    if positions.shape[0] != n_sources:
        raise ValueError(f"positions has {positions.shape[0]} rows for {n_sources} sources")
    return positions


def _reduce(values, average):
    values = np.asarray(values, dtype=float)
    return float(values.mean()) if average else values


def rmse(true, est, average=True):
    """Relative squared error ``||X - Xhat||_F^2 / ||X||_F^2`` (the paper's rMSE)."""
    true, est = _pair(true, est)
    denom = np.sum(true ** 2, axis=(1, 2))
    if np.any(denom == 0):
        raise ValueError("true sources are all zero in some sample; rMSE is undefined")
    return _reduce(np.sum((true - est) ** 2, axis=(1, 2)) / denom, average)


def emd(true, est, positions, average=True):
    """Earth mover's distance (metres) between normalised source maps.

    Masses are the temporal RMS maps normalised to sum 1; the ground cost is
    the Euclidean distance between source positions.  Solved exactly with
    POT's ``ot.emd2`` on the supports of the two maps.
    """
    import ot

    true_map, est_map = _maps(true, est)
    positions = _check_positions(positions, true_map.shape[1])
    values = []
    for a, b in zip(true_map, est_map):
        if not np.any(b > 0):
            b = np.ones_like(b)
        ia, ib = np.flatnonzero(a > 0), np.flatnonzero(b > 0)
        cost = cdist(positions[ia], positions[ib])
        values.append(ot.emd2(a[ia] / a[ia].sum(), b[ib] / b[ib].sum(), cost))
    return _reduce(values, average)


def _support(source_map, threshold):
    peak = source_map.max(axis=1, keepdims=True)
    return (source_map > threshold * peak) & (source_map > 0)


def f1(true, est, threshold=DEFAULT_THRESHOLD, average=True):
    """F1 score of the supports ``map > threshold * max(map)`` of truth and estimate."""
    true_map, est_map = _maps(true, est)
    s_true, s_est = _support(true_map, threshold), _support(est_map, threshold)
    hits = np.sum(s_true & s_est, axis=1)
    return _reduce(2 * hits / (s_true.sum(1) + s_est.sum(1)), average)


def local_maxima(source_map, adjacency, threshold=DEFAULT_THRESHOLD):
    """Boolean mask of mesh local maxima above ``threshold * max``.

    A source is a local maximum when its value is >= that of every neighbour in
    ``adjacency`` and strictly positive.
    """
    source_map = np.atleast_2d(source_map)
    adjacency = sp.csr_matrix(adjacency)
    n_sources = source_map.shape[1]
    if adjacency.shape != (n_sources, n_sources):
        raise ValueError(f"adjacency must have shape ({n_sources}, {n_sources}), "
                         f"got {adjacency.shape}")
    neighbour_max = np.zeros_like(source_map)
    has_nb = np.diff(adjacency.indptr) > 0
    if adjacency.nnz:
        gathered = source_map[:, adjacency.indices]
        starts = adjacency.indptr[:-1][has_nb]
        neighbour_max[:, has_nb] = np.maximum.reduceat(gathered, starts, axis=1)
    return (source_map >= neighbour_max) & _support(source_map, threshold)


def localization_error(true, est, positions, adjacency, threshold=DEFAULT_THRESHOLD,
                       average=True):
    """Mean distance (metres) from each true peak to the nearest estimated peak.

    Peaks are :func:`local_maxima` of the RMS maps on the source mesh.
    """
    true_map, est_map = _maps(true, est)
    positions = _check_positions(positions, true_map.shape[1])
    true_peaks = local_maxima(true_map, adjacency, threshold)
    est_peaks = local_maxima(est_map, adjacency, threshold)
    lo, hi = positions.min(0), positions.max(0)
    diameter = float(np.linalg.norm(hi - lo))
    values = []
    for tp, ep in zip(true_peaks, est_peaks):
        if not ep.any():
            values.append(diameter)
            continue
        values.append(cdist(positions[tp], positions[ep]).min(axis=1).mean())
    return _reduce(values, average)
