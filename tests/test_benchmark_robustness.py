"""The robustness matrix's paired-bootstrap interval of a cell's rMSE ratio."""

import numpy as np

from benchmarks.robustness import ratio_interval


def test_ratio_interval_is_exact_for_proportional_errors_and_covers_the_ratio():
    rng = np.random.default_rng(0)
    reference = rng.uniform(0.3, 1.0, 32)
    assert ratio_interval(reference, reference, seed=1) == [1.0, 1.0]
    lo, hi = ratio_interval(1.2 * reference, reference, seed=1)
    assert abs(lo - 1.2) < 1e-12 and abs(hi - 1.2) < 1e-12
    noisy = reference + rng.normal(0, 0.1, 32)
    lo, hi = ratio_interval(noisy, reference, seed=1)
    assert lo < noisy.mean() / reference.mean() < hi
    assert ratio_interval(noisy, reference, seed=1) == [lo, hi]  # seeded
    # more samples, narrower interval
    many = rng.uniform(0.3, 1.0, 512)
    wide = np.subtract(*ratio_interval(many[:16] + 0.1 * rng.normal(size=16), many[:16], 2)[::-1])
    narrow = np.subtract(*ratio_interval(many + 0.1 * rng.normal(size=512), many, 2)[::-1])
    assert narrow < wide


def test_above_one_lists_losses_but_not_round_off_ties():
    from benchmarks.robustness import above_one

    def cell(ratio):
        return {"ratio": ratio, "ratio_95": [ratio - 0.01, ratio + 0.01]}

    rows = {"tie": {"cells": {"m": cell(1.0 + 2e-16)}},
            "loss": {"cells": {"m": cell(1.02)}},
            "win": {"cells": {"m": cell(0.97)}}}
    text = above_one(rows, names=("m",))
    assert "loss 1.020 [1.010, 1.030]" in text and "tie" not in text and "win" not in text
    assert "(1 of 1 with the whole interval above 1)" in text
    assert above_one({"tie": rows["tie"]}, names=("m",)) == "- m: none"


def test_merge_adds_columns_only_where_the_samples_are_the_same():
    from benchmarks.robustness import REFERENCE, merge

    rows = {"a": {"group": "g", "cells": {REFERENCE: {"rmse": 0.5}, "m": {"rmse": 0.4}}}}
    new = {"a": {"cells": {REFERENCE: {"rmse": 0.5}, "focal": {"rmse": 0.3}}}}
    merged, left_out = merge(rows, new)
    assert set(merged["a"]["cells"]) == {REFERENCE, "m", "focal"} and left_out == []
    assert merged["a"]["group"] == "g" and "focal" not in rows["a"]["cells"]
    new["a"]["cells"][REFERENCE]["rmse"] = 0.51  # other samples: the row is left out
    merged, left_out = merge(rows, new)
    assert left_out == ["a"] and "focal" not in merged["a"]["cells"]
