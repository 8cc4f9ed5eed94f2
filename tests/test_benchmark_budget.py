"""The budget benchmark's evaluation and table."""

import numpy as np

import unfolded_sbl as us
from benchmarks.budget import HELD_OUT, evaluate, table


def test_the_reference_against_itself_is_ratio_one_and_no_f1_change(fwd):
    classical = us.ClassicalCB(forward=fwd, n_iter=5).fit()
    data = us.simulate(fwd, 3, random_state=0, n_times=20)
    sets = {"a": (data, classical.predict(data.sensors))}
    assert evaluate(classical, sets) == {"a": [1.0, 0.0]}
    # an estimate twice as far from the truth everywhere has four times its rMSE
    worse = type("Worse", (), {"predict": lambda self, X: 2 * sets["a"][1] - data.sources})()
    assert np.isclose(evaluate(worse, sets)["a"][0], 4.0, rtol=1e-3)


def test_table_starts_at_the_shipped_model_and_reports_the_best_chunk():
    records = [{"chunk": c, "samples": 960 * (c + 1), "seconds": 45.0 * (c + 1),
                **{k: [1.0 - 0.01 * (c + 1) * (k == "nominal"), 0.0] for k in HELD_OUT}}
               for c in range(-1, 9)]
    lines = table(records).splitlines()
    assert lines[2].startswith("| 0 (shipped) |")
    assert lines[-1].split("|")[3].strip() == f"{0.91:.3f}"  # nominal, the last chunk's
    assert len(lines) == 2 + 5 + 1
