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


@pytest.fixture(scope="module")
def template(recording, tmp_path_factory):
    """Forward models on fsaverage for the recording's sensors, built offline (ico3 BEM
    to keep the suite short): MEG, EEG and MEG+EEG."""
    from unfolded_sbl import templates

    evokeds = recording[0]
    cache = tmp_path_factory.mktemp("forward-cache")
    subjects_dir = templates.make_subjects_dir(tmp_path_factory.mktemp("subjects"))
    messages = []
    built = {picks: templates.forward_for_recording(
        evokeds[0].info, picks, bem_ico=3, cache_dir=cache, subjects_dir=subjects_dir,
        log=messages.append) for picks in (("grad", "mag"), ("eeg",), ("eeg", "grad", "mag"))}
    return built, messages, cache, subjects_dir


def _gamma_map_parity(evoked, forward, cov, picks, loose):
    """Known-noise ClassicalCB on the whitened problem against mne's gamma_map (same
    projections, rank-aware whitening, orientation grouping and loose prior)."""
    from unfolded_sbl.forward import loose_model

    Y, white, ch_names = whitened_problem(evoked, forward, cov, picks, orientation="free")
    assert white.n_orient == 3 and Y.shape[1] == white.n_channels < len(ch_names)
    white, scale = loose_model(white, loose)
    n_iter, L = 10, white.lead_field
    mne_gamma0 = np.linalg.norm(Y[0] @ Y[0].T, "fro") / np.linalg.norm(L, np.inf) ** 2
    ours_unit = np.mean(Y[0] ** 2) / (np.sum(L ** 2) / L.shape[0])
    est = us.ClassicalCB(white, noise=np.ones(L.shape[0]), n_iter=n_iter,
                         init_source_var=mne_gamma0 / ours_unit, keep_history=True).fit()
    est.predict(Y)
    gammas = est.history_["source_var"][0]
    # gamma_map returns gamma_K L^T S(gamma_{K-1}) Y: rebuilt from the history
    model_cov = (L * gammas[-2]) @ L.T + np.eye(L.shape[0])
    ours = gammas[-1][:, None] * (L.T @ np.linalg.solve(model_cov, Y[0]))
    ours = (ours if scale is None else ours * scale[:, None]).reshape(-1, 3, Y.shape[-1])
    # MNE's vector estimates are in x, y, z: the surface-oriented dipoles rotated back
    ours = np.einsum("mkt,mkd->mdt", ours, white.normals.reshape(-1, 3, 3))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        stc = mne.inverse_sparse.gamma_map(
            evoked.copy().pick(ch_names), forward, cov, alpha=1.0, loose=loose, depth=None,
            xyz_same_gamma=True, update_mode=2, tol=0, maxit=n_iter, pca=True,
            pick_ori="vector", verbose=False)
    # gamma_map keeps the active vertices of each source space, in order
    theirs = np.zeros_like(ours)
    offset = row = 0
    for space, active in zip(forward["src"], stc.vertices):
        theirs[offset + np.searchsorted(space["vertno"], active)] = (
            stc.data[row:row + len(active)])
        offset, row = offset + space["nuse"], row + len(active)
    return ours, theirs


@pytest.mark.parametrize("picks", [("grad", "mag"), ("eeg",), ("eeg", "grad", "mag")],
                         ids=["meg", "eeg", "meg+eeg"])
def test_whitened_classicalcb_equals_mne_gamma_map(recording, picks):
    """Same projections, whitening (rank-aware) and orientation grouping: known-noise
    ClassicalCB == mne.inverse_sparse.gamma_map (free orientation, update_mode=2)."""
    evokeds, cov, forward, _ = recording
    ours, theirs = _gamma_map_parity(evokeds[0].copy().crop(0.05, 0.15), forward, cov,
                                     picks, loose=1.0)
    assert np.linalg.norm(ours - theirs) <= 1e-6 * np.linalg.norm(theirs)


def test_loose_orientation_equals_mne_gamma_map(recording, template):
    """On a cortical surface, loose=0.2 (MNE's default there) as gamma_map applies it:
    the tangential dipoles' gain scaled by sqrt(loose), the estimate scaled back."""
    evokeds, cov, _, _ = recording
    forward = template[0][("grad", "mag")]
    ours, theirs = _gamma_map_parity(evokeds[0].copy().crop(0.05, 0.15), forward, cov,
                                     ("grad", "mag"), loose=0.2)
    assert np.linalg.norm(ours - theirs) <= 1e-6 * np.linalg.norm(theirs)


def _peak(stc, forward):
    """MNI-like position (mm) and hemisphere of the strongest local maximum."""
    from unfolded_sbl.localize import peak_report

    peak = peak_report(stc, forward, n_peaks=1)[0]
    return peak["hemisphere"], peak["x_mm"], peak["y_mm"]


@pytest.mark.parametrize("picks", ["meg", "meg,eeg", "eeg"])
def test_responses_peak_where_the_physiology_puts_them(recording, template, picks):
    """On the fsaverage forward built for the recording's sensors (co-registered by its
    digitisation), whitened, loose orientation: auditory responses (N100m) lateral,
    around the sylvian fissure; visual responses posterior, in the hemisphere opposite
    the stimulated visual field.  EEG alone is whitened too (``whiten=True``)."""
    evokeds, cov, _, _ = recording
    forward = template[0][parse_picks(picks)]
    peaks = {}
    for evoked in evokeds:
        stc, located = us.apply(evoked, forward=forward, noise_cov=cov, picks=picks,
                                whiten=True, tmin=0.05, tmax=0.2, return_forward=True)
        peaks[evoked.comment] = _peak(stc, located)
    for side in ("Left", "Right"):
        _, x, y = peaks[f"{side} Auditory"]
        assert abs(x) > 35 and -50 < y < 5, (side, peaks)
        hemisphere, _, y = peaks[f"{side} visual"]
        assert y < -45 and hemisphere == ("right" if side == "Left" else "left"), (side, peaks)


def test_forward_for_recording_is_cached_and_coregistered(recording, template, caplog):
    from unfolded_sbl import templates

    evokeds = recording[0]
    built, messages, cache, subjects_dir = template
    assert any("ICP on" in m and "mm" in m for m in messages)
    meg = built[("grad", "mag")]
    n_meg = len(mne.pick_types(evokeds[0].info, meg=True, exclude="bads"))
    assert meg["nchan"] == n_meg and not mne.forward.is_fixed_orient(meg)
    assert meg["src"]._subject == "fsaverage" and meg["surf_ori"]
    again = []
    cached = templates.forward_for_recording(evokeds[0].info, ("grad", "mag"), bem_ico=3,
                                             cache_dir=cache, subjects_dir=subjects_dir,
                                             log=again.append)
    assert again == [] and np.array_equal(cached["sol"]["data"], meg["sol"]["data"])
    # no digitisation: fsaverage's own head frame, said
    info = evokeds[0].info.copy()
    with info._unlock():
        info["dig"] = None
    warned = []
    trans, how = templates.coregister_fsaverage(info, subjects_dir, log=warned.append)
    assert "no digitised fiducials" in warned[0] and "own head frame" in how
    with info._unlock():
        info["dev_head_t"] = None
    with pytest.raises(ValueError, match="dev_head_t"):
        templates.forward_for_recording(info, ("mag",), cache_dir=cache,
                                        subjects_dir=subjects_dir)
    with pytest.raises(ValueError, match="picks must name"):
        templates.forward_for_recording(info, ("ecg",), cache_dir=cache)


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


@pytest.fixture
def builder_spy(template, monkeypatch):
    """``forward_for_recording`` as apply calls it, redirected to the test's cache (ico3
    BEM) and recording each call's picks."""
    from unfolded_sbl import templates

    _, _, cache, subjects_dir = template
    real, calls = templates.forward_for_recording, []

    def spy(info, picks, **kwargs):
        calls.append(tuple(picks))
        return real(info, picks, bem_ico=3, cache_dir=cache, subjects_dir=subjects_dir,
                    log=None)

    monkeypatch.setattr(templates, "forward_for_recording", spy)
    return calls


def test_apply_without_forward_builds_one_for_the_recording(recording, builder_spy):
    evokeds, cov, _, _ = recording
    stc = us.apply(evokeds[2], noise_cov=cov, picks="meg", tmin=0.1, tmax=0.2,
                   pick_ori="vector")
    assert builder_spy == [("grad", "mag")]
    assert isinstance(stc, mne.VectorSourceEstimate) and stc.subject == "fsaverage"
    assert stc.data.shape[:2] == (1284, 3) and np.isfinite(stc.data).all()
    fixed = us.apply(evokeds[2], noise_cov=cov, picks="meg", tmin=0.1, tmax=0.2, loose=0)
    assert isinstance(fixed, mne.SourceEstimate) and fixed.data.shape[0] == 1284
    with pytest.raises(ValueError, match="pick_ori='vector' needs a free-orientation"):
        us.apply(evokeds[2], noise_cov=cov, picks="meg", loose=0, pick_ori="vector")
    with pytest.raises(ValueError, match="needs whiten='auto' or True"):
        us.apply(evokeds[2], noise_cov=cov, picks="meg", whiten=False)
    with pytest.raises(ValueError, match="whiten must be"):
        us.apply(evokeds[2], noise_cov=cov, picks="eeg", whiten="yes")
    info = evokeds[2].copy().pick("eeg").info
    with info._unlock():
        for ch in info["chs"][:2]:
            ch["loc"][:3] = 0.0
    from unfolded_sbl import templates

    with pytest.raises(ValueError, match="electrodes without a position"):
        templates.forward_for_recording(info, ("eeg",))


def test_localize_command_without_forward_reports_fsaverage_peaks(recording, builder_spy,
                                                                  tmp_path, capsys):
    from unfolded_sbl.cli import main

    out = tmp_path / "meg"
    assert main(["localize", str(DATA / "test-ave.fif.gz"), "--condition", "Left Auditory",
                 "--picks", "meg", "--noise-cov", str(DATA / "test-cov.fif"), "--loose", "1",
                 "--tmin", "0.05", "--tmax", "0.15", "--out", str(out),
                 "--formats", "stc", "csv"]) == 0
    assert builder_spy == [("grad", "mag")]
    printed = capsys.readouterr().out
    assert "MNI-like" in printed and (tmp_path / "meg-lh.stc").exists()
    with pytest.raises(SystemExit):
        main(["localize", str(DATA / "test-ave.fif.gz"), "--picks", "meg", "--loose", "2"])
    assert "--loose must be 'auto' or a number in [0, 1]" in capsys.readouterr().err


def test_simulated_tilt_and_snr_of_the_meg_benchmark(recording, template):
    """bench_meg's problems: untilted dipoles are the fixed model's, and the data hold
    the asked SNR over unit noise."""
    from benchmarks.bench_meg import simulate_tilted
    from unfolded_sbl.forward import loose_model

    evokeds, cov, _, _ = recording
    _, white, _ = whitened_problem(evokeds[0].copy().crop(0, 0.01),
                                   template[0][("grad", "mag")], cov, ("grad", "mag"), "free")
    data, truth = simulate_tilted(white, 3, 0.0, 10.0, random_state=0)
    data_again, _ = simulate_tilted(white, 3, 0.0, 10.0, random_state=0)
    np.testing.assert_array_equal(data, data_again)
    signal = np.einsum("cs,nst->nct", loose_model(white, 0.0)[0].lead_field, truth)
    noise = data - signal
    assert abs(np.std(noise) - 1) < 0.05
    np.testing.assert_allclose(np.mean(signal ** 2, axis=(1, 2)), 10.0, rtol=1e-8)
    tilted, _ = simulate_tilted(white, 3, 60.0, 10.0, random_state=0)
    assert np.abs(tilted - data).max() > 0.1


def test_learned_model_runs_zero_shot_on_whitened_fixed_orientation(recording, template,
                                                                   caplog):
    """A shipped model on whitened MEG with a fixed orientation runs (torch, the whitened
    gain, no average reference) and says it is zero-shot; a loose orientation goes to
    ClassicalCB, said too."""
    evokeds, cov, _, _ = recording
    forward = template[0][("grad", "mag")]
    with caplog.at_level(logging.WARNING, logger="unfolded_sbl"):
        stc, located = us.apply(evokeds[0], "deep-cb-joint", forward=forward, noise_cov=cov,
                                picks="meg", loose=0, tmin=0.05, tmax=0.15,
                                return_forward=True)
    assert "runs zero-shot on the whitened data" in caplog.text
    assert np.isfinite(stc.data).all() and stc.data.shape[0] == located.n_sources == 1284
    assert "deep-cb-joint" in stc.solver_report.solver
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="unfolded_sbl"):
        loose = us.apply(evokeds[0], "deep-cb-joint", forward=forward, noise_cov=cov,
                         picks="meg", tmin=0.05, tmax=0.15)
    assert "free or loose orientation are solved by ClassicalCB" in caplog.text
    expected = us.apply(evokeds[0], forward=forward, noise_cov=cov, picks="meg", tmin=0.05,
                        tmax=0.15)
    np.testing.assert_allclose(loose.data, expected.data, rtol=1e-10)
