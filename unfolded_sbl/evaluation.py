"""Evaluate fitted source estimators on simulated data and format metric tables."""

from __future__ import annotations

import time

import numpy as np

from . import metrics

METRIC_COLUMNS = ("rmse", "emd", "f1", "le")


def score_sources(true, pred, forward):
    """rMSE, EMD (m), F1 and LE (m) of one set of predictions, averaged over samples."""
    return {"rmse": metrics.rmse(true, pred),
            "emd": metrics.emd(true, pred, forward.positions),
            "f1": metrics.f1(true, pred),
            "le": metrics.localization_error(true, pred, forward.positions, forward.adjacency)}


def evaluate(estimators, data, forward, predict_kwargs=None, chunk_size=None):
    """Metrics and time per sample of fitted estimators on one dataset.

    Parameters
    ----------
    estimators : dict of str -> estimator
        Fitted estimators with ``predict(X)``.
    data : SimulatedData
    forward : ForwardModel
        Geometry for EMD and LE.
    predict_kwargs : dict of str -> dict | None
        Extra ``predict`` arguments per estimator name (e.g. known noise);
        per-sample arrays, split along their first axis with ``chunk_size``.
    chunk_size : int | None
        Predict this many samples at a time (bounds memory on large source
        spaces); None predicts all at once.

    Returns
    -------
    rows : dict of str -> dict
        Per estimator: ``rmse``, ``emd`` (m), ``f1``, ``le`` (m) averaged over
        samples, and ``ms_per_sample`` (prediction time, chunks included).
    """
    predict_kwargs = predict_kwargs or {}
    rows = {}
    for name, est in estimators.items():
        start = time.perf_counter()
        pred = _predict(est, data.sensors, predict_kwargs.get(name, {}), chunk_size)
        elapsed = time.perf_counter() - start
        rows[name] = {**score_sources(data.sources, pred, forward),
                      "ms_per_sample": 1e3 * elapsed / len(data)}
    return rows


def _predict(est, X, kwargs, chunk_size):
    if not chunk_size:
        return est.predict(X, **kwargs)
    return np.concatenate([
        est.predict(X[i:i + chunk_size], **{k: v[i:i + chunk_size] for k, v in kwargs.items()})
        for i in range(0, len(X), chunk_size)])


def format_table(rows, columns=METRIC_COLUMNS + ("ms_per_sample",), markdown=False):
    """Fixed-width (or markdown) table of :func:`evaluate` rows."""
    headers = ["method", *columns]
    body = [[name] + [_fmt(row.get(c, np.nan)) for c in columns] for name, row in rows.items()]
    if markdown:
        lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
        lines += ["| " + " | ".join(r) + " |" for r in body]
        return "\n".join(lines)
    widths = [max(len(str(x)) for x in col) for col in zip(headers, *body)]
    fmt = "  ".join(f"{{:<{w}}}" if i == 0 else f"{{:>{w}}}" for i, w in enumerate(widths))
    return "\n".join(fmt.format(*r) for r in [headers, *body])


def _fmt(value):
    if isinstance(value, str):
        return value
    if not np.isfinite(value):
        return "-"
    return f"{value:.4f}" if abs(value) < 100 else f"{value:.4g}"
