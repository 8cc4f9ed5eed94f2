"""Evaluate fitted source estimators on simulated data and format metric tables."""

from __future__ import annotations

import time

import numpy as np

from . import metrics

METRIC_COLUMNS = ("rmse", "emd", "f1", "le")


#: Table headers: ``rmse`` is the paper's name for a relative squared error.
HEADERS = {"rmse": "rel_sq_err", "emd": "emd_m", "le": "le_m"}
#: Printed under tables that use :data:`HEADERS`.
TABLE_NOTE = ("rel_sq_err: relative squared error ||X - X_hat||^2 / ||X||^2 (us.rmse, the "
              "paper's rMSE; n/a for outputs without current units, e.g. sLORETA's "
              "standardised map); emd_m, le_m: earth mover's distance and localisation "
              "error in metres; f1 of supports (higher is better)")
#: Printed under tables whose times come from ``evaluate(..., timing_repeats=k)``.
TIMING_NOTE = ("ms_per_sample: predict() on the whole batch, divided by its samples; the "
               "best of {k} timed calls after a warm-up call, in this process on this "
               "machine (other load slows every call; python -m benchmarks.bench_classical "
               "and bench_onnx compare speeds properly)")


def has_current_units(est):
    """False for estimators whose output is a standardised statistic (sLORETA's
    default): their squared error against currents in A m means nothing."""
    return getattr(est, "output", "current") != "standardized"


def score_sources(true, pred, forward, current_units=True):
    """rMSE, EMD (m), F1 and LE (m) of one set of predictions, averaged over samples.

    ``current_units=False`` (a standardised output) gives NaN for the rMSE.
    """
    return {"rmse": metrics.rmse(true, pred) if current_units else float("nan"),
            "emd": metrics.emd(true, pred, forward.positions),
            "f1": metrics.f1(true, pred),
            "le": metrics.localization_error(true, pred, forward.positions, forward.adjacency)}


def evaluate(estimators, data, forward, predict_kwargs=None, chunk_size=None,
             timing_repeats=0):
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
    timing_repeats : int
        0 (default): time the one prediction that is scored.  ``k > 0``: that
        prediction is the warm-up, and ``ms_per_sample`` is the best of ``k``
        more (the least disturbed by other work on the machine).

    Returns
    -------
    rows : dict of str -> dict
        Per estimator: ``rmse``, ``emd`` (m), ``f1``, ``le`` (m) averaged over
        samples, and ``ms_per_sample`` (prediction time of the whole dataset per
        sample, chunks included).
        ``rmse`` is NaN for standardised outputs (sLORETA's default), whose
        scale is not a current.
    """
    predict_kwargs = predict_kwargs or {}
    rows = {}
    for name, est in estimators.items():
        start = time.perf_counter()
        pred = _predict(est, data.sensors, predict_kwargs.get(name, {}), chunk_size)
        elapsed = time.perf_counter() - start
        if timing_repeats:
            elapsed = min(_timed(est, data.sensors, predict_kwargs.get(name, {}), chunk_size)
                          for _ in range(timing_repeats))
        rows[name] = {**score_sources(data.sources, pred, forward, has_current_units(est)),
                      "ms_per_sample": 1e3 * elapsed / len(data)}
    return rows


def _timed(est, X, kwargs, chunk_size):
    start = time.perf_counter()
    _predict(est, X, kwargs, chunk_size)
    return time.perf_counter() - start


def _predict(est, X, kwargs, chunk_size):
    if not chunk_size:
        return est.predict(X, **kwargs)
    return np.concatenate([
        est.predict(X[i:i + chunk_size], **{k: v[i:i + chunk_size] for k, v in kwargs.items()})
        for i in range(0, len(X), chunk_size)])


def format_table(rows, columns=METRIC_COLUMNS + ("ms_per_sample",), markdown=False):
    """Fixed-width (or markdown) table of :func:`evaluate` rows."""
    headers = ["method", *(HEADERS.get(c, c) for c in columns)]
    body = [[name] + [_fmt(row.get(c, np.nan), c) for c in columns]
            for name, row in rows.items()]
    if markdown:
        lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
        lines += ["| " + " | ".join(r) + " |" for r in body]
        return "\n".join(lines)
    widths = [max(len(str(x)) for x in col) for col in zip(headers, *body)]
    fmt = "  ".join(f"{{:<{w}}}" if i == 0 else f"{{:>{w}}}" for i, w in enumerate(widths))
    return "\n".join(fmt.format(*r) for r in [headers, *body])


def _fmt(value, column=""):
    """One format per column: milliseconds to 0.1, metrics to 4 decimals."""
    if isinstance(value, str):
        return value
    if not np.isfinite(value):
        return "n/a"
    return f"{value:.1f}" if column.startswith("ms") else f"{value:.4f}"
