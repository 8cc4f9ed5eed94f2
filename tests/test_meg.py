"""MEG and MEG+EEG: whitened by a noise covariance as MNE's inverse solvers do, on the
evoked responses of mne-python's test recording (tests/data/mne, from the sample
dataset: auditory and visual stimuli, 306 MEG and 60 EEG channels)."""

import logging
import warnings
from pathlib import Path

import numpy as np
import pytest

import unfolded_sbl as us
from unfolded_sbl.meg import parse_picks, whitened_problem

mne = pytest.importorskip("mne")
DATA = Path(__file__).parent / "data" / "mne"


@pytest.fixture(scope="module")
def recording():
    evokeds = mne.read_evokeds(DATA / "test-ave.fif.gz", verbose=False)
    cov = mne.read_cov(DATA / "test-cov.fif", verbose=False)
    info = evokeds[0].info
    sphere = mne.make_sphere_model("auto", "auto", info, verbose=False)
    src = mne.setup_volume_source_space(sphere=sphere, pos=15.0, mindist=10.0, verbose=False)
    forward = mne.make_forward_solution(info, None, src, sphere, meg=True, eeg=True,
                                        verbose=False)
    return evokeds, cov, forward, sphere


@pytest.mark.parametrize("picks", [("grad", "mag"), ("eeg",), ("eeg", "grad", "mag")],
                         ids=["meg", "eeg", "meg+eeg"])
def test_whitened_classicalcb_equals_mne_gamma_map(recording, picks):
    """Same projections, whitening (rank-aware) and orientation grouping: known-noise
    ClassicalCB == mne.inverse_sparse.gamma_map (free orientation, update_mode=2)."""
    evokeds, cov, forward, _ = recording
    evoked = evokeds[0].copy().crop(0.05, 0.15)
    Y, white, ch_names = whitened_problem(evoked, forward, cov, picks, orientation="free")
    assert white.n_orient == 3 and Y.shape[1] == white.n_channels < len(ch_names)
    n_iter, L = 10, white.lead_field
    mne_gamma0 = np.linalg.norm(Y[0] @ Y[0].T, "fro") / np.linalg.norm(L, np.inf) ** 2
    ours_unit = np.mean(Y[0] ** 2) / (np.sum(L ** 2) / L.shape[0])
    est = us.ClassicalCB(white, noise=np.ones(L.shape[0]), n_iter=n_iter,
                         init_source_var=mne_gamma0 / ours_unit, keep_history=True).fit()
    est.predict(Y)
    gammas = est.history_["source_var"][0]
    # gamma_map returns gamma_K L^T S(gamma_{K-1}) Y: rebuilt from the history
    model_cov = (L * gammas[-2]) @ L.T + np.eye(L.shape[0])
    ours = (gammas[-1][:, None] * (L.T @ np.linalg.solve(model_cov, Y[0]))).reshape(
        -1, 3, Y.shape[-1])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        stc = mne.inverse_sparse.gamma_map(
            evoked.copy().pick(ch_names), forward, cov, alpha=1.0, loose=1.0, depth=None,
            xyz_same_gamma=True, update_mode=2, tol=0, maxit=n_iter, pca=True,
            pick_ori="vector", verbose=False)
    theirs = np.zeros_like(ours)
    theirs[np.searchsorted(forward["src"][0]["vertno"], stc.vertices[0])] = stc.data
    assert np.linalg.norm(ours - theirs) <= 1e-6 * np.linalg.norm(theirs)


def _peak_mm(stc, sphere, forward):
    """Position (mm, head frame, from the sphere's centre) of the strongest source at
    the time of maximal power."""
    power = stc.data ** 2 if stc.data.ndim == 2 else (stc.data ** 2).sum(1)
    t = power.sum(0).argmax()
    rr = forward["src"][0]["rr"][stc.vertices[0]]
    return 1e3 * (rr[power[:, t].argmax()] - sphere["r0"]), stc.times[t]


@pytest.mark.parametrize("picks", ["meg", "meg,eeg"])
def test_responses_peak_where_the_physiology_puts_them(recording, picks):
    """Auditory responses (N100m) lateral over a temporal lobe; visual responses
    posterior, in the hemisphere opposite the stimulated visual field."""
    evokeds, cov, forward, sphere = recording
    peaks = {e.comment: _peak_mm(us.apply(e, forward=forward, noise_cov=cov, picks=picks,
                                          tmin=0.05, tmax=0.2), sphere, forward)
             for e in evokeds}
    for side in ("Left", "Right"):
        (x, y, z), t = peaks[f"{side} Auditory"]
        assert abs(x) > 40 and 0.07 < t < 0.13, (side, x, y, z, t)
        (x, y, z), t = peaks[f"{side} visual"]
        assert y < -40 and (x > 0 if side == "Left" else x < 0), (side, x, y, z, t)


def test_apply_on_meg_gives_vector_estimates_and_names_its_solver(recording, tmp_path,
                                                                   caplog):
    evokeds, cov, forward, _ = recording
    evoked = evokeds[2]
    fname = tmp_path / "noise-cov.fif"
    cov.save(fname, verbose=False)
    with caplog.at_level(logging.WARNING, logger="unfolded_sbl"):
        vector = us.apply(evoked, "deep-cb-joint", forward=forward, noise_cov=str(fname),
                          picks="meg", pick_ori="vector", tmin=0.1, tmax=0.2)
    assert "trained on EEG" in caplog.text  # ClassicalCB answered, and said so
    assert isinstance(vector, mne.VolVectorSourceEstimate)
    assert vector.data.shape[:2] == (forward["nsource"], 3)
    length = us.apply(evoked, forward=forward, noise_cov=cov, picks="meg", tmin=0.1, tmax=0.2)
    np.testing.assert_allclose(length.data, np.linalg.norm(vector.data, axis=1), rtol=1e-10)
    assert np.isfinite(length.data).all() and length.data.max() > 0
    baseline = us.apply(evoked, "sLORETA", forward=forward, noise_cov="baseline", picks="meg",
                        tmin=0.1, tmax=0.2)
    assert np.isfinite(baseline.data).all()


def test_bad_picks_and_missing_inputs_are_named(recording):
    evokeds, cov, forward, _ = recording
    with pytest.raises(ValueError, match="picks must name channel types"):
        parse_picks("ecg")
    assert parse_picks("meg,eeg") == ("eeg", "grad", "mag")
    with pytest.raises(ValueError, match="need noise_cov="):
        us.apply(evokeds[0], forward=forward, picks="meg")
    with pytest.raises(ValueError, match="forward= an mne.Forward"):
        us.apply(evokeds[0], forward="biosemi64-ico3", noise_cov=cov, picks="meg")


def test_localize_command_on_meg_writes_the_estimate_and_peaks(recording, tmp_path, capsys):
    from unfolded_sbl.cli import main

    evokeds, cov, forward, _ = recording
    mne.write_forward_solution(tmp_path / "meg-fwd.fif", forward, verbose=False)
    out = tmp_path / "meg"
    assert main(["localize", str(DATA / "test-ave.fif.gz"), "--picks", "meg", "--forward",
                 str(tmp_path / "meg-fwd.fif"), "--noise-cov", str(DATA / "test-cov.fif"),
                 "--tmin", "0.05", "--tmax", "0.15", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "mm in the source space's own frame" in printed and "MNI-like" not in printed
    assert (tmp_path / "meg-vl.stc").exists() and (tmp_path / "meg-peaks.csv").exists()


def test_learned_models_leave_free_orientation_to_classicalcb(recording, caplog):
    evokeds, _, forward, _ = recording
    free = us.ForwardModel.from_mne(forward, orientation="free")
    evoked = evokeds[0].copy().pick("eeg")
    with caplog.at_level(logging.WARNING, logger="unfolded_sbl"):
        stc = us.apply(evoked, "deep-cb-joint", forward=free, tmin=0.05, tmax=0.15)
    assert "trained for fixed-orientation EEG" in caplog.text
    expected = us.apply(evoked, "ClassicalCB", forward=free, tmin=0.05, tmax=0.15)
    np.testing.assert_allclose(stc.data, expected.data, rtol=1e-10)
