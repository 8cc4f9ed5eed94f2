"""Outputs that never mislead: empty estimates, unused channels, solver labels, units,
timings."""

import csv
import logging
import time

import numpy as np
import pytest

import unfolded_sbl as us
from unfolded_sbl import cli
from unfolded_sbl.evaluation import evaluate, format_table
from unfolded_sbl.quality import EMPTY_LEVEL_DB, signal_level_db

mne = pytest.importorskip("mne")

#: The 26 channels of MNE's BrainVision test recording that are 10-20 names.
CAP26 = ["Fp1", "Fp2", "F7", "F3", "Fz", "F4", "F8", "FC5", "FC1", "FC2", "FC6", "T7", "C3",
         "Cz", "C4", "T8", "CP5", "CP1", "CP2", "CP6", "P7", "P3", "Pz", "P4", "P8", "O1"]


def _noise_evoked(baseline_gain=3.0, seed=0):
    """An evoked response of 26 channels averaged over 5 trials, -0.1..0.3 s at 500 Hz,
    whose noise covariance (its noisier baseline) explains the whole response."""
    rng = np.random.default_rng(seed)
    sfreq = 500.0
    times = np.arange(int(0.4 * sfreq) + 1) / sfreq - 0.1
    trials = rng.normal(size=(5, len(CAP26), len(times))) * 10e-6
    trials[:, :, times < 0] *= baseline_gain
    info = mne.create_info(CAP26, sfreq, "eeg")
    epochs = mne.EpochsArray(trials, info, tmin=-0.1, verbose=False)
    return epochs.average()


def _response_evoked(fwd, data):
    info = mne.create_info(fwd.ch_names, 100.0, "eeg")
    return mne.EvokedArray(data.sensors[0], info, tmin=-0.2, verbose=False)


# -- 1. empty estimates --------------------------------------------------------------
@pytest.mark.parametrize("model", ["ClassicalCB", "deep-cb-known"])
def test_an_evoked_response_the_noise_explains_gives_an_empty_estimate(model, caplog):
    with caplog.at_level(logging.WARNING, logger="unfolded_sbl"):
        stc = us.apply(_noise_evoked(), model, noise_cov="baseline")
    report = stc.solver_report
    assert report.empty and report.signal_level_db < EMPTY_LEVEL_DB
    assert report.data_to_noise_db < 0  # the noise model holds more power than the data
    said = [r.getMessage() for r in caplog.records if "no source rises" in r.getMessage()]
    assert len(said) == 1 and "dB relative to the noise model" in said[0]
    assert said[0].startswith(report.solver)
    assert stc.copy().solver_report.empty  # travels with copies


def test_a_real_response_is_not_empty(fwd, data, caplog):
    for model in ("ClassicalCB", "deep-cb-joint"):
        with caplog.at_level(logging.WARNING, logger="unfolded_sbl"):
            stc = us.apply(_response_evoked(fwd, data), model)
        assert not stc.solver_report.empty
        assert stc.solver_report.signal_level_db > EMPTY_LEVEL_DB + 20
    assert not [r for r in caplog.records if "no source rises" in r.getMessage()]
    # sLORETA has no source variances: never called empty, no level
    stc = us.apply(_response_evoked(fwd, data), "sLORETA")
    assert not stc.solver_report.empty and stc.solver_report.signal_level_db is None


def test_estimator_empty_attribute_is_relative_to_the_data_scale(fwd, data):
    est = us.ClassicalCB(fwd, noise="known").fit()
    noise_var = data.noise_var[:2]
    est.predict(data.sensors[:2], noise_var=noise_var)
    assert not est.empty_.any()
    volts = est.signal_level_db_
    est.predict(data.sensors[:2] * 1e6, noise_var=noise_var * 1e12)
    np.testing.assert_allclose(est.signal_level_db_, volts, atol=1e-6)
    # a noise model 100x the data's power: every source pruned
    est.predict(data.sensors[:2], noise_var=noise_var * 1e4)
    assert est.empty_.all() and (est.signal_level_db_ < EMPTY_LEVEL_DB).all()
    # all-zero data: nothing to explain, not "empty"
    est.predict(np.zeros((1, 64, 10)), noise_var=noise_var[:1])
    assert not est.empty_.any()


def test_signal_level_db_is_the_modelled_sensor_power():
    lead_field = np.array([[1.0, 0.0], [0.0, 2.0]])
    level = signal_level_db(np.array([[1.0, 0.0], [0.0, 1.0]]), lead_field,
                            np.array([0.5, 2.0]))
    np.testing.assert_allclose(level, [0.0, 0.0], atol=1e-12)
    assert signal_level_db(np.zeros((1, 2)), lead_field, np.array([1.0]))[0] == -np.inf


def test_localize_prints_no_peaks_and_draws_no_map_for_an_empty_estimate(tmp_path, capsys):
    fname = tmp_path / "noise-ave.fif"
    _noise_evoked().save(fname, verbose=False)
    out = tmp_path / "noise"
    code = cli.main(["localize", str(fname), "--model", "ClassicalCB", "--noise-cov",
                     "baseline", "--formats", "stc", "png", "csv", "html", "--out", str(out)])
    assert code == 0
    captured = capsys.readouterr()
    assert "no source rises above the noise" in captured.out
    assert "peak sources" not in captured.out and "amplitude" not in captured.out
    lines = (tmp_path / "noise-peaks.csv").read_text().splitlines()
    assert len(lines) == 1  # the header, no peak
    page = (tmp_path / "noise.html").read_text()
    assert "no source rises above the noise" in page and "niivue" not in page.lower()
    assert (tmp_path / "noise.png").read_bytes()[:4] == b"\x89PNG"


# -- 2. channels that are not used ---------------------------------------------------
def _eeg_meg_evoked(fwd, data, eeg=True):
    eeg_names = list(fwd.ch_names) if eeg else []
    meg_names = [f"MEG {i:03d}" for i in range(157)]
    names = eeg_names + meg_names + ["EOG1", "STI 014"]
    types = ["eeg"] * len(eeg_names) + ["mag"] * 157 + ["eog", "stim"]
    rng = np.random.default_rng(0)
    values = np.concatenate([data.sensors[0]] * eeg + [
        rng.normal(size=(157, 100)) * 1e-13, rng.normal(size=(1, 100)) * 1e-5,
        np.zeros((1, 100))])
    info = mne.create_info(names, 100.0, types)
    return mne.EvokedArray(values, info, tmin=-0.2, verbose=False)


def test_meg_and_auxiliary_channels_are_named_once(fwd, data, caplog):
    with caplog.at_level(logging.INFO, logger="unfolded_sbl"):
        stc = us.apply(_eeg_meg_evoked(fwd, data), "ClassicalCB")
    warned = [r.getMessage() for r in caplog.records
              if r.levelno == logging.WARNING and "not used" in r.getMessage()]
    assert len(warned) == 1
    assert "157 MEG" in warned[0] and "picks='meg,eeg'" in warned[0]
    informed = [r.getMessage() for r in caplog.records
                if r.levelno == logging.INFO and "not used" in r.getMessage()]
    assert len(informed) == 1 and "1 EOG (EOG1)" in informed[0] and "1 STIM" in informed[0]
    # the EEG alone was solved
    direct = us.apply(_response_evoked(fwd, data), "ClassicalCB")
    np.testing.assert_allclose(stc.data, direct.data, rtol=1e-8,
                               atol=1e-8 * np.abs(direct.data).max())


def test_meg_only_data_say_what_meg_needs(fwd, data):
    evoked = _eeg_meg_evoked(fwd, data, eeg=False)
    with pytest.raises(ValueError, match="need noise_cov="):  # MEG by default here
        us.apply(evoked, "ClassicalCB")
    with pytest.raises(ValueError, match="no dev_head_t"):  # no forward: one is built
        us.apply(evoked, "ClassicalCB", noise_cov="baseline")
    with pytest.raises(ValueError, match="forward= an mne.Forward"):
        us.apply(evoked, "ClassicalCB", noise_cov="baseline", forward="biosemi64-ico3")
    with pytest.raises(ValueError, match=r"157 MEG channels and no good EEG channels: "
                                         r"localise them with picks='meg'"):
        us.apply(evoked, "ClassicalCB", picks="eeg")


# -- 3. labels name the solver that answered -----------------------------------------
def test_outputs_name_the_solver_that_answered(fwd, data, tmp_path, capsys, monkeypatch):
    """Noise-free data: the regime check hands deep-cb-joint's input to the classical
    updates, and the title, CSV, HTML page and printed table say so."""
    from unfolded_sbl import viz

    info = mne.create_info(fwd.ch_names, 100.0, "eeg")
    fname = tmp_path / "clean-ave.fif"
    mne.EvokedArray(fwd.lead_field @ data.sources[0], info, tmin=0.0,
                    verbose=False).save(fname, verbose=False)
    titles = []
    drawn = viz.plot_peak_map

    def spy(*args, **kwargs):
        titles.append(kwargs["title"])
        return drawn(*args, **kwargs)

    monkeypatch.setattr(viz, "plot_peak_map", spy)
    out = tmp_path / "clean"
    assert cli.main(["localize", str(fname), "--model", "deep-cb-joint", "--formats", "png",
                     "csv", "html", "--out", str(out)]) == 0
    label = "deep-cb-joint, solved by the classical updates (regime check)"
    assert label in titles[0]
    printed = capsys.readouterr().out
    assert f"{label}, peak sources" in printed
    with open(tmp_path / "clean-peaks.csv", newline="") as fid:
        rows = list(csv.DictReader(fid))
    assert rows and all(row["solver"] == label for row in rows)
    assert label in (tmp_path / "clean.html").read_text()


# -- 4. one unit, named everywhere ---------------------------------------------------
def test_csv_table_and_axes_name_one_unit(fwd, data, tmp_path):
    from unfolded_sbl.localize import format_report, write_outputs

    stc = us.apply(_response_evoked(fwd, data), "ClassicalCB", tmin=0.0)
    peaks, _ = write_outputs(stc, fwd, tmp_path / "r", formats=("csv",))
    header, first = (tmp_path / "r-peaks.csv").read_text().splitlines()[:2]
    columns = header.split(",")
    assert "amplitude_nAm" in columns and "amplitude" not in columns
    value = float(first.split(",")[columns.index("amplitude_nAm")])
    assert value == pytest.approx(1e9 * peaks[0]["amplitude"], rel=1e-3)
    table = format_report(peaks)
    assert "amplitude (nA m)" in table
    assert f"{value:.3g}" in table.splitlines()[1]
    # sLORETA's standardised map: arbitrary units, not nA m
    assert "nA m" not in format_report(peaks, units="a.u.")


def test_time_course_axis_has_its_unit_and_unclipped_labels(fwd, data):
    import matplotlib

    matplotlib.use("Agg")
    from unfolded_sbl.localize import peak_report
    from unfolded_sbl.viz import plot_peak_map

    stc = us.apply(_response_evoked(fwd, data), "ClassicalCB", tmin=0.0)
    fig = plot_peak_map(stc, fwd, peak_report(stc, fwd), units="A m")
    fig.canvas.draw()
    courses = [ax for ax in fig.axes if ax.get_xlabel() == "time (ms)"][0]
    assert courses.get_ylabel() == "amplitude (nA m)"
    box = courses.get_tightbbox(fig.canvas.get_renderer())
    assert box.x0 >= 0 and box.y0 >= 0 and box.x1 <= fig.bbox.x1  # inside the figure
    colorbar = [ax for ax in fig.axes if "nA m" in ax.get_ylabel() and ax is not courses]
    assert colorbar  # the colour bar names the same unit
    import matplotlib.pyplot as plt

    plt.close(fig)


# -- 5. timings that do not mislead --------------------------------------------------
class _SlowFirstCall:
    """predict() takes 0.3 s the first time (a warm-up), no time after."""

    def __init__(self, sources):
        self.sources, self.calls = sources, 0

    def predict(self, X):
        self.calls += 1
        if self.calls == 1:
            time.sleep(0.3)
        return self.sources


def test_evaluate_times_after_a_warm_up_and_keeps_the_best_repeat(fwd, data):
    est = _SlowFirstCall(data.sources)
    rows = evaluate({"slow start": est}, data, fwd, timing_repeats=3)
    assert est.calls == 4
    assert rows["slow start"]["ms_per_sample"] < 0.5 * 300 / len(data)
    once = evaluate({"slow start": _SlowFirstCall(data.sources)}, data, fwd)
    assert once["slow start"]["ms_per_sample"] >= 300 / len(data)


def test_metric_table_uses_one_format_per_column():
    rows = {"a": {"rmse": 1.64732, "emd": 0.01, "f1": 0.5, "le": 0.02,
                  "ms_per_sample": 290.84},
            "b": {"rmse": 250.0, "emd": 0.01, "f1": 0.5, "le": 0.02, "ms_per_sample": 9.87}}
    lines = format_table(rows).splitlines()
    assert lines[1].split()[1] == "1.6473" and lines[2].split()[1] == "250.0000"
    assert lines[1].split()[-1] == "290.8" and lines[2].split()[-1] == "9.9"


# -- 6. threads: what the parallelism guide tells users to set ------------------------
def test_parallelism_guide_settings_take_effect(fwd, data):
    import re
    from pathlib import Path

    import torch

    guide = (Path(__file__).resolve().parents[1] / "docs" / "guide" / "parallelism.rst")
    text = guide.read_text()
    snippet = re.search(r"code-block:: python\n\n(.*?)\n\n  or", text, re.S).group(1)
    before = torch.get_num_threads()
    est = us.ClassicalCB(fwd).fit()
    namespace = {"est": est, "X": data.sensors[:1]}
    try:
        exec(compile("\n".join(line[5:] for line in snippet.splitlines()), "guide", "exec"),
             namespace)
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)
    assert namespace["sources"].shape == (1, 1284, 100)
    onnx = us.load_pretrained("deep-cb-joint", backend="onnx", intra_op_num_threads=1)
    assert onnx.session_.get_session_options().intra_op_num_threads == 1


def test_demo_says_its_samples_favour_the_focal_prior(demo_run):
    code, out, _ = demo_run
    assert code == 0
    assert "training prior of deep-cb-joint-focal" in out and "unfolded-sbl models" in out
