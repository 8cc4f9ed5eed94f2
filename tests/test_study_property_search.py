"""The long random search of the robustness properties: its draws and its counts."""

import numpy as np
import pytest

from benchmarks._problems import FAMILIES
from benchmarks.studies import property_search


def test_draws_stay_in_the_families_and_corrupted_problems_lose_their_truth(fwd):
    rng = np.random.default_rng(0)
    seen = set()
    for _ in range(40):
        described, X, truth, noise_var = property_search.draw(rng, fwd)
        low, high, integer, has_truth = FAMILIES[described["family"]]
        assert low <= described["value"] <= high
        assert X.shape[:2] == (3, fwd.lead_field.shape[0]) and noise_var.shape == X.shape[:2]
        assert (truth is not None) == (has_truth and described["extra"] is None)
        seen.add(described["extra"])
    assert seen == {None, *property_search.EXTRAS}


class _Solver:
    def __init__(self, known=False):
        self.noise = "known" if known else "learn"


def test_a_learned_model_above_the_bound_is_counted_with_its_reproducer():
    truth = np.ones((3, 4, 2))
    names = ["ClassicalCB", "ClassicalCB-known", "m/torch"]
    stats = {n: {"problems": 1, "failures": [], "with_truth": 0, "worse": [], "worst": None}
             for n in names}
    solvers = {n: _Solver() for n in names}
    described = {"family": "snr", "value": 30.0, "seed": 5, "extra": None, "cap": "c"}
    outputs = {"ClassicalCB": 0.8 * truth, "ClassicalCB-known": 0.8 * truth,
               "m/torch": 0.7 * truth}  # relative squared error 0.09 against 0.04
    property_search._compare(stats, outputs, solvers, truth, described)
    assert stats["m/torch"]["with_truth"] == 1
    assert stats["m/torch"]["worse"][0]["ratio"] == 2.25
    assert stats["m/torch"]["worst"]["seed"] == 5
    assert stats["ClassicalCB"]["with_truth"] == 0  # the references are not compared
    # both below SOLVED: not a loss, whatever the ratio
    outputs = {**outputs, "ClassicalCB": 0.999 * truth, "m/torch": 0.98 * truth}
    property_search._compare(stats, outputs, solvers, truth, described)
    assert len(stats["m/torch"]["worse"]) == 1 and stats["m/torch"]["with_truth"] == 2
    text = property_search.report(stats, 1, 0)
    assert "| m/torch | 1 | 0 | 2 | 1 | snr | 2.25 (c, snr, 30, 5) |" in text
    assert "No exception and no non-finite output." in text


def test_exceptions_and_non_finite_output_are_failures():
    class Raises:
        def predict(self, X):
            raise RuntimeError("boom")

    class NaN:
        source_var_ = np.zeros((1, 2))
        noise_var_ = np.ones((1, 2))

        def predict(self, X):
            return np.full((1, 2, 3), np.nan)

    X = np.zeros((1, 2, 3))
    assert property_search.solve(Raises(), X, None) == (None, "RuntimeError: boom")
    assert property_search.solve(NaN(), X, None)[1] == "non-finite output"


@pytest.mark.slow
def test_long_random_search_finds_no_exception_and_no_non_finite_output():
    """The robustness properties searched at random (``pytest -m slow``; minutes from
    ``PROPERTY_SEARCH_MINUTES``, default 15): no solver raises or returns NaN/inf on any
    problem drawn."""
    import os

    minutes = float(os.environ.get("PROPERTY_SEARCH_MINUTES", "15"))
    stats = property_search.search(minutes, seed=0, verbose=False)
    assert all(s["problems"] > 0 for s in stats.values())
    failures = {name: s["failures"][:3] for name, s in stats.items() if s["failures"]}
    assert not failures, failures
