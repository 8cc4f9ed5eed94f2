"""The density benchmark: chunked scoring equals scoring at once, and its table."""

import numpy as np

import unfolded_sbl as us
from benchmarks import density
from unfolded_sbl.metrics import f1, rmse


def test_chunked_scores_equal_the_scores_of_one_prediction(fwd, monkeypatch):
    monkeypatch.setattr(density, "CHUNK", 3)
    data = us.simulate(fwd, 7, random_state=0, n_times=20)
    est = us.ClassicalCB(fwd, n_iter=5).fit()
    errors, f1s = density.scores(est, data)
    estimate = est.predict(data.sensors)
    np.testing.assert_allclose(errors, rmse(data.sources, estimate, average=False))
    np.testing.assert_allclose(f1s, f1(data.sources, estimate, average=False))


def test_table_marks_classical_rows_and_gives_the_denser_model_its_interval():
    def cell(ratio, fallback=None):
        return {"rmse": 0.5 * ratio, "ratio": ratio, "ratio_95": [ratio - 0.01, ratio + 0.01],
                "f1_diff": 0.0 if ratio == 1 else 0.1, "classical_fallback": fallback}

    row = {"cap": "biosemi64", "source_space": "ico5", "simulator": "paper",
           "n_sources": 20484, "spacing_mm": 2.8, "cells": {
               density.REFERENCE: cell(1.0), "deep-cb-joint": cell(1.0, 1.0),
               density.DENSER_MODEL: cell(0.79, 0.0)}}
    lines = density.markdown([row]).splitlines()
    assert lines[0].count("|") == len(lines[2].split("|")) - 1 == 8
    assert "| biosemi64-ico5 | 20484 | 2.8 mm | paper | 0.500 |" in lines[2]
    assert "1.000 (+0.000) classical" in lines[2]
    assert "0.790 [0.780, 0.800] (+0.100) |" in lines[2]


def test_forwards_beyond_the_templates_are_built_once_and_named(tmp_path, monkeypatch):
    from benchmarks import _forwards
    from unfolded_sbl import templates

    built = []

    def fake_builder(cap, spacing, perturbed=False):
        built.append((cap, spacing, perturbed))
        return "an mne.Forward"

    small = us.ForwardModel(np.random.default_rng(0).normal(size=(8, 20)),
                            np.random.default_rng(1).normal(size=(20, 3)))
    monkeypatch.setattr(templates, "make_template_forward", fake_builder)
    monkeypatch.setattr(us.ForwardModel, "from_mne",
                        classmethod(lambda cls, fwd, name=None, **fields: cls(
                            small.lead_field, small.positions, name=name, **fields)))
    shipped = _forwards.template_or_built("biosemi64", "ico3", True, tmp_path)
    assert shipped.name == "biosemi64-ico3-perturbed" and built == []
    first = _forwards.template_or_built("cap8", "oct6", True, tmp_path, montage=["Cz"],
                                        verbose=False)
    again = _forwards.template_or_built("cap8", "oct6", True, tmp_path, verbose=False)
    assert built == [(["Cz"], "oct6", True)]  # built once, then read from the cache
    assert first.name == again.name == "cap8-oct6-perturbed"
    assert (again.cap, again.spacing, again.variant) == ("cap8", "oct6", "perturbed")
    np.testing.assert_allclose(again.lead_field, small.lead_field, rtol=1e-6, atol=1e-6)
