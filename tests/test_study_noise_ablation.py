"""The noise-ablation benchmark's report."""

from benchmarks.studies.noise_ablation import report


def test_report_marks_intervals_above_one_and_names_the_worst_condition():
    rows = {"a": {"m": {"as shipped": [1.02, 1.01, 1.03, -0.01],
                        "no noise corrections": [0.99, 0.98, 1.00, 0.01]}},
            "b": {"m": {"as shipped": [1.04, 0.99, 1.09, 0.0],
                        "no noise corrections": [0.90, 0.85, 0.95, 0.02]}}}
    table, worst = report(rows, ["m"])
    lines = table.splitlines()
    assert lines[0] == "| condition | m, as shipped | m, no noise corrections |"
    assert "**1.020** [1.010, 1.030] (-0.010)" in lines[2]
    assert "**" not in lines[3]  # b's interval reaches below 1
    assert worst.splitlines() == [
        "- m, as shipped: worst b 1.040 [0.990, 1.090]; conditions with the whole interval "
        "above 1.00: 1 of 2",
        "- m, no noise corrections: worst a 0.990 [0.980, 1.000]; conditions with the whole "
        "interval above 1.00: 0 of 2"]
