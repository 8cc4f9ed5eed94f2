"""apply(): mne.Evoked / mne.Epochs in, mne.SourceEstimate out."""

from pathlib import Path

import numpy as np
import pytest

import unfolded_sbl as us

mne = pytest.importorskip("mne")
REAL_EEG = Path(__file__).resolve().parents[2] / "shared" / "data" / "real_eeg"


def _evoked(fwd, data, names=None, scale=1.0):
    names = names or fwd.ch_names
    info = mne.create_info(names, 100.0, "eeg")
    return mne.EvokedArray(data.sensors[0][: len(names)] * scale, info, tmin=-0.2,
                           verbose=False)


def test_apply_evoked_returns_source_estimate(fwd, data):
    evoked = _evoked(fwd, data)
    stc = us.apply(evoked, "ClassicalCB", baseline=None)
    assert isinstance(stc, mne.SourceEstimate)
    assert stc.data.shape == (1284, 100)
    assert stc.subject == "fsaverage"
    assert stc.tmin == pytest.approx(-0.2) and stc.tstep == pytest.approx(0.01)
    for a, b in zip(stc.vertices, fwd.vertices):
        np.testing.assert_array_equal(a, b)
    direct = us.ClassicalCB(fwd).fit().predict(data.sensors[:1])[0]
    np.testing.assert_allclose(stc.data, direct, rtol=1e-8, atol=1e-8 * np.abs(direct).max())
    # by default the mean of -0.2 s .. 0 s (21 samples, as MNE's (None, 0)) is removed
    pre = data.sensors[:1, :, :21].mean(-1, keepdims=True)
    corrected = us.ClassicalCB(fwd).fit().predict(data.sensors[:1] - pre)[0]
    default = us.apply(evoked, "ClassicalCB").data
    np.testing.assert_allclose(default, corrected, rtol=1e-8,
                               atol=1e-8 * np.abs(corrected).max())


def test_apply_volts_and_microvolts_agree_up_to_scale(fwd, data):
    a = us.apply(_evoked(fwd, data), "sLORETA")
    b = us.apply(_evoked(fwd, data, scale=1e6), "sLORETA")
    np.testing.assert_allclose(b.data, a.data * 1e6, rtol=1e-6)


def test_apply_bad_and_flat_channels_are_dropped(fwd, data):
    evoked = _evoked(fwd, data)
    evoked.info["bads"] = [fwd.ch_names[3]]
    evoked.data[5] = 0.0  # a flat channel
    stc = us.apply(evoked, "ClassicalCB", tmin=0.0, tmax=0.3, baseline=None)
    keep = [i for i in range(64) if i not in (3, 5)]
    sub = us.ForwardModel(fwd.lead_field[keep], fwd.positions, [fwd.ch_names[i] for i in keep],
                          fwd.adjacency)
    start = int(round(0.2 * 100))
    direct = us.ClassicalCB(sub).fit().predict(data.sensors[:1, keep, start:start + 31])[0]
    assert stc.data.shape == (1284, 31)
    np.testing.assert_allclose(stc.data, direct, rtol=1e-6, atol=1e-8 * np.abs(direct).max())


def test_apply_channel_mismatch_lists_missing(fwd, data):
    names = list(fwd.ch_names[:10]) + ["XYZ1", "XYZ2"]
    # no shipped template has them, and they have no position to build one with
    with pytest.raises(ValueError, match=r"without a position: \['XYZ1', 'XYZ2'\]"):
        us.apply(_evoked(fwd, data, names=names), "ClassicalCB")
    with pytest.raises(ValueError, match=r"missing from the forward .*\['XYZ1', 'XYZ2'\]"):
        us.apply(_evoked(fwd, data, names=names), "ClassicalCB", forward=fwd)
    with pytest.raises(TypeError, match="mne.Evoked or mne.Epochs"):
        us.apply(data.sensors, "ClassicalCB")
    with pytest.raises(ValueError, match="unknown model"):
        us.apply(_evoked(fwd, data), "magic")


def test_apply_says_when_the_regime_check_solved_classically(fwd, data, caplog):
    """A learned model on noise-free data: the classical solver answers, and apply says so."""
    import logging

    info = mne.create_info(fwd.ch_names, 100.0, "eeg")
    clean = mne.EvokedArray(fwd.lead_field @ data.sources[0], info, tmin=0.0, verbose=False)
    with caplog.at_level(logging.INFO, logger="unfolded_sbl"):
        stc = us.apply(clean, "deep-cb-joint")
    said = [r.getMessage() for r in caplog.records if "classical updates" in r.getMessage()]
    assert said == ["deep-cb-joint: the evoked response was solved by the classical updates "
                    "at the same depth (regime check: data outside the trained regime, or an "
                    "estimate denser than the corrections help on)"]
    direct = us.ClassicalCB(fwd).fit().predict(clean.data[None])[0]
    # the file's classical updates invert by LU (onnxruntime's Inverse), ClassicalCB by
    # Cholesky: on noise-free data (noise at its floor, an ill-conditioned model
    # covariance) the two differ by round-off amplified over 25 iterations
    assert np.linalg.norm(stc.data - direct) <= 1e-2 * np.linalg.norm(direct)
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="unfolded_sbl"):
        us.apply(_evoked(fwd, data), "deep-cb-joint")
    assert not [r for r in caplog.records if "classical updates" in r.getMessage()]
    assert stc.solver_report.solver == (
        "deep-cb-joint, solved by the classical updates (regime check)")


def test_apply_epochs_gives_one_stc_per_epoch(fwd, data):
    info = mne.create_info(fwd.ch_names, 100.0, "eeg")
    epochs = mne.EpochsArray(data.sensors[:3], info, verbose=False)
    stcs = us.apply(epochs, "sLORETA")
    assert len(stcs) == 3 and stcs[0].data.shape == (1284, 100)


@pytest.mark.skipif(not REAL_EEG.exists(), reason="../shared/data/real_eeg is absent")
def test_apply_on_recorded_erp_core_evoked():
    """A recorded evoked (upper-case names such as FP1) runs through every solver."""
    fname = sorted((REAL_EEG / "erp_core_p3").glob("*_ave.fif"))[0]
    evoked = mne.read_evokeds(fname, verbose=False)[1]  # non-target
    for model in ("sLORETA", "ClassicalCB", "deep-cb-joint"):
        stc = us.apply(evoked, model, tmin=0.1, tmax=0.16)
        assert stc.data.shape[0] == 1284 and np.all(np.isfinite(stc.data))
        assert stc.times[0] == pytest.approx(evoked.times[np.searchsorted(evoked.times, 0.1)])
        assert np.any(stc.data != 0)
