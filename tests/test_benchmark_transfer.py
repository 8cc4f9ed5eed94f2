"""The transfer benchmark's zero-shot check reads each cell against its bound."""

from benchmarks import transfer


def test_criterion_check_reads_ratios_and_intervals_against_each_bound(monkeypatch):
    monkeypatch.setattr(transfer, "shipped", lambda: ["deep-cb-joint", "deep-graph-cb-joint"])
    cells = {"deep-cb-joint": {"ratio": 0.99, "ratio_95": [0.97, 1.01]},
             "deep-graph-cb-joint": {"ratio": 0.955, "ratio_95": [0.93, 0.98]}}
    table = {"things63-ico4": {"cells": cells},
             "biosemi128-ico4": {"cells": {
                 "deep-cb-joint": {"ratio": 1.02, "ratio_95": [1.01, 1.03]},
                 "deep-graph-cb-joint": {"ratio": 0.90, "ratio_95": [0.88, 0.94]}}}}
    lines = transfer.criterion_check(table).splitlines()
    cb = next(line for line in lines if line.startswith("- deep-cb-joint"))
    graph = next(line for line in lines if line.startswith("- deep-graph-cb-joint"))
    assert "things63-ico4 0.990 [0.970, 1.010] (meets 1.00)" in cb
    assert "biosemi128-ico4 1.020 [1.010, 1.030] (misses 1.00, whole interval above)" in cb
    assert "things63-ico4 0.955 [0.930, 0.980] (misses 0.95)" in graph
    assert "(meets 0.95, whole interval below)" in graph


def test_transfer_rows_score_each_method_on_the_same_samples():
    import unfolded_sbl as us
    from unfolded_sbl.metrics import f1, rmse

    rows = transfer.transfer_rows(2, ["biosemi64-ico3"], ["deep-cb-joint"], ("torch",),
                                  verbose=False)
    cells = rows["biosemi64-ico3"]["cells"]
    assert set(cells) == {transfer.REFERENCE, "ClassicalCB-100", "deep-cb-joint"}
    assert cells[transfer.REFERENCE]["ratio"] == 1.0
    assert cells[transfer.REFERENCE]["f1_diff"] == 0.0
    fwd = us.load_forward("biosemi64-ico3")
    data = us.simulate(us.load_forward("biosemi64-ico3-perturbed"), 2, random_state=7000)
    classical = us.ClassicalCB(fwd).fit().predict(data.sensors)
    learned = us.load_pretrained("deep-cb-joint", forward=fwd).predict(data.sensors)
    assert cells["deep-cb-joint"]["rmse"] == rmse(data.sources, learned)
    assert abs(cells["deep-cb-joint"]["f1_diff"]
               - (f1(data.sources, learned) - f1(data.sources, classical))) < 1e-12
