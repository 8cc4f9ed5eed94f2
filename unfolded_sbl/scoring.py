"""scikit-learn scorers for the source metrics.

The scorers follow sklearn's ``scorer(estimator, X, y)`` protocol and read the
source geometry from the fitted estimator's ``forward_``, so they work as
``scoring=`` in ``cross_validate`` and (multi-metric) ``GridSearchCV``.  Errors
(rMSE, EMD, LE) are negated so that greater is better, as sklearn expects.
"""

from __future__ import annotations

from . import metrics


class SourceScorer:
    """Score an estimator's ``predict(X)`` against true sources ``y``.

    Parameters
    ----------
    name : {"rmse", "emd", "f1", "le"}
    greater_is_better : bool
        False negates the metric.
    """

    _needs = {"rmse": (), "emd": ("positions",), "f1": (),
              "le": ("positions", "adjacency")}
    _funcs = {"rmse": metrics.rmse, "emd": metrics.emd, "f1": metrics.f1,
              "le": metrics.localization_error}

    def __init__(self, name, greater_is_better):
        if name not in self._funcs:
            raise ValueError(f"unknown metric {name!r}; expected one of {list(self._funcs)}")
        self.name = name
        self.greater_is_better = greater_is_better

    def __call__(self, estimator, X, y=None, sample_weight=None):
        if y is None:
            # sklearn calls scorers without y after fit(X) alone, and turns this error
            # into a NaN score with a warning that carries this message
            raise ValueError(
                f"the {self.name} scorer compares estimates with true sources, but got no "
                "y: pass the true sources, e.g. GridSearchCV(...).fit(X, y) or "
                "cross_validate(est, X, y, ...) with y of shape (n_samples, n_sources, "
                "n_times) (simulated data: data.sensors, data.sources)")
        est = estimator.predict(X)
        forward = _fitted_forward(estimator)
        args = [getattr(forward, attr) for attr in self._needs[self.name]]
        value = self._funcs[self.name](y, est, *args)
        return value if self.greater_is_better else -value

    def __repr__(self):
        sign = "" if self.greater_is_better else "neg_"
        return f"<SourceScorer {sign}{self.name}>"


def _fitted_forward(estimator):
    """The forward model of a fitted estimator, also at the end of a Pipeline."""
    final = estimator.steps[-1][1] if hasattr(estimator, "steps") else estimator
    forward = getattr(final, "forward_", None)
    if forward is None:
        raise ValueError(f"{type(final).__name__} has no fitted forward_ model; "
                         "source scorers need one to read source positions")
    return forward


rmse_scorer = SourceScorer("rmse", greater_is_better=False)
emd_scorer = SourceScorer("emd", greater_is_better=False)
f1_scorer = SourceScorer("f1", greater_is_better=True)
le_scorer = SourceScorer("le", greater_is_better=False)
SCORERS = {"rmse": rmse_scorer, "emd": emd_scorer, "f1": f1_scorer, "le": le_scorer}
