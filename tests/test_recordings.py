"""Recordings as users bring them: baseline by default, noise covariance, forward
precedence, and messages that say what to do (issues 14 and 15)."""

import logging

import numpy as np
import pytest

import unfolded_sbl as us
from unfolded_sbl import cli, localize

mne = pytest.importorskip("mne")
SFREQ = 100.0


def _occipital_patch(fwd):
    """Amplitudes (n_sources,) of a small patch around an occipital source."""
    xyz = localize.mni_like_coordinates(fwd)
    lobes = np.array([localize.approximate_lobe(p) for p in xyz])
    candidates = np.flatnonzero(lobes == "occipital")
    centre = candidates[np.argmin(xyz[candidates, 1])]  # the most posterior
    dist = np.linalg.norm(fwd.positions - fwd.positions[centre], axis=1)
    return np.exp(-dist ** 2 / (2 * 0.005 ** 2)) * (dist < 0.012)


def _evoked_with_offset(fwd, offset_channel="AF3", offset=100e-6, noise_std=0.3e-6,
                        tmin=-0.2, n_times=51, noise_scale=None, seed=0):
    """An occipital evoked response (peak ~100 ms) plus white sensor noise and a DC
    offset on one channel; no baseline correction applied."""
    rng = np.random.default_rng(seed)
    times = tmin + np.arange(n_times) / SFREQ
    course = np.exp(-((times - 0.1) / 0.03) ** 2)
    sources = _occipital_patch(fwd)[:, None] * course[None] * 20e-9
    clean = fwd.lead_field @ sources
    std = noise_std * (np.ones(fwd.n_channels) if noise_scale is None else noise_scale)
    data = clean + std[:, None] * rng.standard_normal(clean.shape)
    if offset_channel is not None:
        data[fwd.ch_names.index(offset_channel)] += offset
    info = mne.create_info(list(fwd.ch_names), SFREQ, "eeg")
    evoked = mne.EvokedArray(data, info, tmin=tmin, nave=30, verbose=False)
    return evoked, std ** 2


def _top_region(csv_path):
    import csv

    with open(csv_path, newline="") as fid:
        return next(csv.DictReader(fid))["region"]


def test_dc_offset_channel_localised_occipitally_by_default(fwd, tmp_path, capsys):
    """sLORETA has no per-sensor noise to absorb the offset: without the baseline
    the offset channel wins (the joint-noise solvers partly absorb it as that
    sensor's noise)."""
    evoked, _ = _evoked_with_offset(fwd)
    fname = tmp_path / "offset-ave.fif"
    evoked.save(fname, verbose=False)
    assert cli.main(["localize", str(fname), "--tmin", "0", "--formats", "csv", "--out",
                     str(tmp_path / "deep")]) == 0  # the default model, ClassicalCB
    assert _top_region(tmp_path / "deep-peaks.csv") == "occipital"
    common = ["localize", str(fname), "--model", "sLORETA", "--tmin", "0",
              "--formats", "csv"]
    assert cli.main(common + ["--out", str(tmp_path / "default")]) == 0
    printed = capsys.readouterr().out
    assert "baseline: (start, 0 s)" in printed
    assert _top_region(tmp_path / "default-peaks.csv") == "occipital"
    assert cli.main(common + ["--no-baseline", "--drop-bad", "none", "--out",
                              str(tmp_path / "raw")]) == 0
    assert "baseline: none" in capsys.readouterr().out
    assert _top_region(tmp_path / "raw-peaks.csv") == "frontal"
    # without baseline, drop-bad auto (the default) drops the offset channel instead
    assert cli.main(common + ["--no-baseline", "--out", str(tmp_path / "dropped")]) == 0
    assert _top_region(tmp_path / "dropped-peaks.csv") == "occipital"


def test_quality_warnings_name_the_channels(fwd, caplog):
    evoked, _ = _evoked_with_offset(fwd)  # AF3 offset by 100 uV
    evoked.data[fwd.ch_names.index("Cz")] *= 0.0  # flat: dropped as before
    rng = np.random.default_rng(0)
    evoked.data[fwd.ch_names.index("T8")] += 30e-6 * rng.standard_normal(len(evoked.times))
    with caplog.at_level(logging.WARNING, logger="unfolded_sbl"):
        _, used = us.apply(evoked, "sLORETA", return_forward=True)
    text = caplog.text
    assert "AF3 carries a DC offset of +100 uV" in text and "baseline correction" in text
    assert "T8 has" in text and "median channel SD" in text
    assert "dropping T8" in text  # noisy: dropped; AF3's offset is removed by the baseline
    assert "T8" not in used.ch_names and "AF3" in used.ch_names and "Cz" not in used.ch_names
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="unfolded_sbl"):
        _, kept = us.apply(evoked, "sLORETA", drop_bad="none", return_forward=True)
    assert "T8" in kept.ch_names and "dropping T8" not in caplog.text


def test_microvolts_stored_as_volts_and_short_windows_are_reported(fwd, caplog):
    evoked, _ = _evoked_with_offset(fwd, offset_channel=None)
    evoked.data *= 1e6
    with caplog.at_level(logging.WARNING, logger="unfolded_sbl"):
        us.apply(evoked, "sLORETA", tmin=0.1, tmax=0.13)
    assert "microvolts stored as volts" in caplog.text
    assert "the window has 4 sample(s)" in caplog.text
    caplog.clear()
    evoked.data *= 1e-6
    with caplog.at_level(logging.WARNING, logger="unfolded_sbl"):
        us.apply(evoked, "sLORETA", tmin=0.0)
    assert caplog.text == ""  # a clean recording gets no warning


@pytest.mark.parametrize("model", ["ClassicalCB", "deep-cb-known"])
def test_noise_cov_from_baseline_matches_known_noise(fwd, model):
    # a long baseline (1 s) with per-channel noise levels spanning 4x in std
    scale = np.exp(np.random.default_rng(1).uniform(np.log(0.5), np.log(2.0), fwd.n_channels))
    evoked, true_var = _evoked_with_offset(fwd, offset_channel=None, tmin=-1.0, n_times=131,
                                           noise_scale=scale)
    stc = us.apply(evoked, model, noise_cov="baseline", tmin=0.0, tmax=0.3)
    X = evoked.copy().apply_baseline((None, 0), verbose=False).crop(0.0, 0.3).data[None]
    if model == "ClassicalCB":
        est = us.ClassicalCB(fwd, noise="known").fit()
    else:
        est = us.load_pretrained(model, forward=fwd, backend="onnx")
    known = est.predict(X, noise_var=true_var[None])[0]
    assert np.linalg.norm(stc.data - known) / np.linalg.norm(known) < 0.05


def test_noise_cov_as_mne_covariance_is_scaled_by_nave(fwd):
    from unfolded_sbl.mne_io import noise_variances

    evoked, true_var = _evoked_with_offset(fwd, offset_channel=None)
    names = list(fwd.ch_names)
    cov = mne.Covariance(np.diag(true_var * evoked.nave), names, [], [], nfree=100,
                         verbose=False)
    shuffled = names[::-1]  # channels are matched by name, not by position
    np.testing.assert_allclose(noise_variances(evoked, shuffled, cov), true_var[::-1])
    with pytest.raises(ValueError, match=r"no entry for channels \['XYZ'\]"):
        noise_variances(evoked, names[:3] + ["XYZ"], cov)
    with pytest.raises(ValueError, match="pre-stimulus"):
        noise_variances(evoked.copy().crop(0.0, None), names, "baseline")


def test_known_noise_model_without_noise_cov_says_what_to_pass(fwd):
    evoked, _ = _evoked_with_offset(fwd, offset_channel=None)
    with pytest.raises(ValueError, match="noise_cov="):
        us.apply(evoked, "deep-cb-known")


def test_localize_known_noise_model_with_baseline_noise_cov(fwd, tmp_path, capsys):
    evoked, _ = _evoked_with_offset(fwd, offset_channel=None)
    fname = tmp_path / "sim-ave.fif"
    evoked.save(fname, verbose=False)
    assert cli.main(["localize", str(fname), "--model", "deep-cb-known", "--noise-cov",
                     "baseline", "--tmin", "0", "--formats", "csv", "--out",
                     str(tmp_path / "known")]) == 0
    assert _top_region(tmp_path / "known-peaks.csv") == "occipital"


def test_estimator_forward_wins_over_the_template_search(fwd):
    things = us.load_forward("things63-ico3")
    common = [c for c in fwd.ch_names if c.lower() in {n.lower() for n in things.ch_names}]
    assert len(common) > 20
    info = mne.create_info(common, SFREQ, "eeg")
    rng = np.random.default_rng(0)
    evoked = mne.EvokedArray(rng.normal(size=(len(common), 20)) * 1e-6, info, verbose=False)
    _, used = us.apply(evoked, us.ClassicalCB(forward="things63-ico3", n_iter=3),
                       return_forward=True)
    # the template's rows for the recording's channels (named as a subset of it)
    assert used.name == f"things63-ico3 ({len(common)} of 63 channels)"
    _, default = us.apply(evoked, us.ClassicalCB(n_iter=3), return_forward=True)
    assert default.name == f"biosemi64-ico3 ({len(common)} of 64 channels)"
    with pytest.raises(ValueError, match="give one of them"):
        us.apply(evoked, us.ClassicalCB(forward="things63-ico3"), forward="biosemi64-ico3")


def test_misspelt_channel_is_named_before_an_offline_build(fwd, monkeypatch, caplog):
    from unfolded_sbl import templates

    def no_build(*args, **kwargs):
        raise RuntimeError("offline build reached")

    monkeypatch.setattr(templates, "forward_for_montage", no_build)
    names = list(fwd.ch_names[:30])
    names[0] = "FP1x"
    info = mne.create_info(names, SFREQ, "eeg")
    evoked = mne.EvokedArray(np.random.default_rng(0).normal(size=(30, 10)) * 1e-6, info,
                             verbose=False)
    with caplog.at_level(logging.WARNING, logger="unfolded_sbl"), pytest.raises(
            RuntimeError, match="offline build reached"):
        us.apply(evoked, "sLORETA")
    assert "FP1x (did you mean Fp1?" in caplog.text


def test_two_dimensional_single_sample_message(fwd):
    est = us.ClassicalCB(fwd, n_iter=2).fit()
    with pytest.raises(ValueError, match=r"\(n_samples, n_channels\).*\(1, 64, 100\)"):
        est.predict(np.ones((64, 100)))


def test_missing_recording_says_the_file_does_not_exist(tmp_path, capsys):
    assert cli.main(["localize", str(tmp_path / "missing-ave.fif")]) == 2
    assert "no such file" in capsys.readouterr().err


REAL_EEG = __import__("pathlib").Path(__file__).resolve().parents[2] / "shared" / "data" / \
    "real_eeg"


@pytest.mark.skipif(not (REAL_EEG / "erp_core_p3").exists(), reason="no recorded EEG here")
def test_localize_known_noise_model_on_erp_core(tmp_path, capsys):
    fname = sorted((REAL_EEG / "erp_core_p3").glob("*_ave.fif"))[0]
    assert cli.main(["localize", str(fname), "--model", "deep-cb-known", "--noise-cov",
                     "baseline", "--tmin", "0.08", "--tmax", "0.14", "--formats", "csv",
                     "--out", str(tmp_path / "erp")]) == 0
    assert (tmp_path / "erp-peaks.csv").read_text().count("\n") >= 2
