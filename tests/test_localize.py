"""The main job: reading recordings, the localize command, peak reports."""

from pathlib import Path

import numpy as np
import pytest

import unfolded_sbl as us
from benchmarks.studies.report_figures import chromium, screenshot
from unfolded_sbl import cli, localize

mne = pytest.importorskip("mne")
REAL_EEG = Path(__file__).resolve().parents[2] / "shared" / "data" / "real_eeg"


def _evoked_file(fwd, data, tmp_path, scale=1.0):
    info = mne.create_info(fwd.ch_names, 100.0, "eeg")
    evoked = mne.EvokedArray(data.sensors[0] * scale, info, tmin=-0.2, verbose=False)
    fname = tmp_path / "sim-ave.fif"
    evoked.save(fname, overwrite=True, verbose=False)
    return fname


def test_approximate_lobes():
    assert localize.approximate_lobe((10, -95, 5)) == "occipital"
    assert localize.approximate_lobe((-30, -60, 50)) == "parietal"
    assert localize.approximate_lobe((55, -20, -15)) == "temporal"
    assert localize.approximate_lobe((30, 40, 20)) == "frontal"
    assert localize.approximate_lobe((-6, -38, 6)) == "cingulate (medial)"


def test_peak_report_finds_a_single_source(fwd):
    data = np.zeros((fwd.n_sources, 30))
    idx = len(fwd.vertices[0]) + 17  # right hemisphere
    data[idx, 12] = 5.0
    data[idx, 11] = 2.0
    stc = mne.SourceEstimate(data, fwd.vertices, tmin=-0.1, tstep=0.01, subject="fsaverage")
    peaks = localize.peak_report(stc, fwd)
    assert len(peaks) == 1
    assert peaks[0]["source"] == idx and peaks[0]["hemisphere"] == "right"
    assert peaks[0]["time_s"] == pytest.approx(0.02) and peaks[0]["amplitude"] == 5.0
    xyz = localize.mni_like_coordinates(fwd)[idx]
    assert peaks[0]["x_mm"] == pytest.approx(xyz[0], abs=0.05) and xyz[0] > 0  # right is +x
    assert localize.peak_report(stc.copy().crop(0.05, None), fwd) == []  # all zero


def test_every_peak_is_reported_at_the_map_time(fwd):
    """One peak time in the title, table and CSV: that of the map."""
    data = np.zeros((fwd.n_sources, 30))
    data[17, 12] = 5.0   # strongest, at 20 ms
    data[900, 20] = 4.0  # its own maximum at 100 ms, but 1.0 at the map time
    data[900, 12] = 1.0
    stc = mne.SourceEstimate(data, fwd.vertices, tmin=-0.1, tstep=0.01, subject="fsaverage")
    peaks = localize.peak_report(stc, fwd)
    assert [p["time_s"] for p in peaks] == [0.02, 0.02]
    assert [p["amplitude"] for p in peaks] == [5.0, 1.0]
    assert all(round(p["y_mm"], 1) == p["y_mm"] for p in peaks)


def test_localize_command_writes_stc_png_csv(fwd, data, tmp_path, capsys):
    fname = _evoked_file(fwd, data, tmp_path)
    out = tmp_path / "out" / "sim"
    code = cli.main(["localize", str(fname), "--model", "ClassicalCB", "--tmin", "0",
                     "--tmax", "0.3", "--out", str(out)])
    assert code == 0
    printed = capsys.readouterr().out
    assert "peak sources" in printed and "wrote" in printed
    stc = mne.read_source_estimate(str(out) + "-lh.stc")
    assert stc.data.shape == (1284, 31) and stc.tmin == pytest.approx(0.0, abs=1e-6)
    assert (tmp_path / "out" / "sim.png").read_bytes()[:4] == b"\x89PNG"
    lines = (tmp_path / "out" / "sim-peaks.csv").read_text().splitlines()
    assert lines[0].startswith("hemisphere,region,x_mm") and len(lines) >= 2
    # the peak of the report is the strongest source of the estimate
    direct = us.apply(mne.read_evokeds(fname, verbose=False)[0], "ClassicalCB", tmin=0,
                      tmax=0.3)
    t = np.argmax((direct.data ** 2).sum(0))
    assert int(lines[1].split(",")[7]) == np.argmax(np.abs(direct.data[:, t]))  # source


def test_localize_errors_are_clear(fwd, data, tmp_path, capsys):
    assert cli.main(["localize", str(tmp_path / "nope-ave.fif")]) == 2
    assert "nope-ave.fif" in capsys.readouterr().err
    # a channel with neither a 10-05 name nor a montage position
    names = list(fwd.ch_names[:20]) + ["E17"]
    info = mne.create_info(names, 100.0, "eeg")
    evoked = mne.EvokedArray(data.sensors[0][:21], info, verbose=False)
    with pytest.raises(ValueError, match=r"without a position: \['E17'\].*montage"):
        us.apply(evoked, "sLORETA")


def test_apply_builds_a_template_for_other_caps(fwd, data, monkeypatch):
    """Channels outside the shipped templates go to the offline builder, with the
    montage positions of non-standard names."""
    from unfolded_sbl import templates

    calls = {}

    def fake_builder(ch_names, positions=None, log=print, **kwargs):
        calls["ch_names"], calls["positions"] = list(ch_names), positions
        rows = [fwd.ch_names.index(c) if c in fwd.ch_names else 0 for c in ch_names]
        return us.ForwardModel(fwd.lead_field[rows], fwd.positions, list(ch_names),
                               fwd.adjacency, vertices=fwd.vertices)

    monkeypatch.setattr(templates, "forward_for_montage", fake_builder)
    names = list(fwd.ch_names[:20]) + ["E17"]
    info = mne.create_info(names, 100.0, "eeg")
    evoked = mne.EvokedArray(data.sensors[0][:21], info, verbose=False)
    pos = {n: np.array([0.0, 0.0, 0.09]) + 0.001 * i for i, n in enumerate(names)}
    evoked.set_montage(mne.channels.make_dig_montage(ch_pos=pos, coord_frame="head"))
    stc = us.apply(evoked, "sLORETA")
    assert calls["ch_names"] == names
    np.testing.assert_allclose(calls["positions"]["E17"], pos["E17"])
    assert stc.data.shape == (1284, 100)


def test_demo_draws_truth_beside_estimates(demo_run):
    code, out, png = demo_run
    assert code == 0
    assert png.read_bytes()[:4] == b"\x89PNG"
    assert "truth beside" in out


@pytest.mark.skipif(not REAL_EEG.exists(), reason="../shared/data/real_eeg is absent")
def test_eeglab_recording_epochs_on_square():
    fname = REAL_EEG / "eeglab_tutorial" / "eeglab_data.set"
    evoked = localize.read_recording(fname, event="square", l_freq=1.0, h_freq=30.0)
    assert isinstance(evoked, mne.Evoked) and evoked.nave > 10
    assert "EOG1" not in evoked.ch_names  # typed EOG, left out of the EEG average
    stc, fwd = us.apply(evoked, "deep-cb-joint", tmin=0.1, tmax=0.3, return_forward=True)
    assert "FPz" in fwd.ch_names and np.all(np.isfinite(stc.data))
    epochs = localize.read_recording(fname, event="square", average=False)
    assert isinstance(epochs, mne.BaseEpochs) and len(epochs) == evoked.nave


def test_raw_recording_is_epoched_on_an_event(fwd, data, tmp_path):
    """Raw files: epochs on an annotation, averaged; a montage can be set by name."""
    sfreq = 100.0
    n_events = 6
    trace = np.concatenate([data.sensors[i % 8] for i in range(n_events)], axis=1)
    raw = mne.io.RawArray(trace, mne.create_info(fwd.ch_names, sfreq, "eeg"), verbose=False)
    onsets = 0.5 + np.arange(n_events - 1)
    raw.set_annotations(mne.Annotations(onsets, 0.0, ["stim"] * (n_events - 1)))
    fname = tmp_path / "rec_raw.fif"
    raw.save(fname, verbose=False)
    evoked = localize.read_recording(fname, event="stim", tmin=-0.1, tmax=0.3,
                                     montage="biosemi64")
    assert isinstance(evoked, mne.Evoked) and evoked.nave == n_events - 1
    assert evoked.get_montage() is not None
    assert evoked.times[0] == pytest.approx(-0.1)
    with pytest.raises(ValueError, match=r"event 'nope'.*\['stim'\]"):
        localize.read_recording(fname, event="nope")
    continuous = localize.read_recording(fname)  # no event: one segment, cropped by apply
    np.testing.assert_allclose(continuous.data, raw.get_data(), rtol=1e-6)
    stc = us.apply(continuous, "sLORETA", tmin=1.0, tmax=2.0)
    assert stc.data.shape == (1284, 101) and stc.tmin == pytest.approx(1.0)


def test_html_viewer_is_self_contained_and_png_is_readable(fwd, data, tmp_path):
    import re

    fname = _evoked_file(fwd, data, tmp_path)
    out = tmp_path / "view"
    assert cli.main(["localize", str(fname), "--model", "ClassicalCB", "--tmin", "0",
                     "--formats", "html", "png", "csv", "--out", str(out)]) == 0
    page = (tmp_path / "view.html").read_text(encoding="utf-8")
    # nothing is loaded from the network: no external src/href/url()/import/fetch
    # (the bundled viewer's source mentions URLs in comments; none is a resource)
    external = re.findall(r"""(?:src|href)\s*=\s*["']\s*(?:https?:)?//|url\(\s*["']?"""
                          r"""(?:https?:)?//|import\s*\(?\s*["'](?:https?:)?//|"""
                          r"""fetch\(\s*["'](?:https?:)?//""", page)
    assert external == []
    assert "<canvas" in page and "data:image/png;base64," in page
    peaks = (tmp_path / "view-peaks.csv").read_text().splitlines()
    assert peaks[1].split(",")[1] in page  # the table carries the top peak's region
    from matplotlib.image import imread

    image = imread(tmp_path / "view.png")
    assert image.shape[0] >= 800 and image.shape[1] >= 1000  # large views, not a strip


@pytest.mark.skipif(chromium() is None, reason="headless Chromium is not installed")
def test_html_viewer_renders_in_headless_chromium(fwd, data, tmp_path):
    fname = _evoked_file(fwd, data, tmp_path)
    assert cli.main(["localize", str(fname), "--model", "ClassicalCB", "--tmin", "0",
                     "--formats", "html", "--out", str(tmp_path / "view")]) == 0
    shot = tmp_path / "shot.png"
    assert screenshot(tmp_path / "view.html", shot, timeout=120)
    from matplotlib.image import imread

    pixels = imread(shot)[..., :3]
    height = pixels.shape[0]
    # the 3-D canvas (the upper 70 % of the window): a drawn brain, not a blank area
    assert pixels[int(0.1 * height):int(0.6 * height)].std() > 0.02


def test_localize_prints_when_the_regime_check_solved_classically(fwd, data, tmp_path,
                                                                   capsys):
    """The default learned model on noise-free data: the command says which solver ran."""
    import logging

    info = mne.create_info(fwd.ch_names, 100.0, "eeg")
    fname = tmp_path / "clean-ave.fif"
    mne.EvokedArray(fwd.lead_field @ data.sources[0], info, tmin=0.0,
                    verbose=False).save(fname, verbose=False)
    level = logging.getLogger("unfolded_sbl").level
    assert cli.main(["localize", str(fname), "--model", "deep-cb-joint", "--formats", "csv",
                     "--out",
                     str(tmp_path / "clean")]) == 0
    printed = capsys.readouterr().out
    assert "deep-cb-joint: the evoked response was solved by the classical updates" in printed
    assert "running on CPUExecutionProvider" in printed
    assert logging.getLogger("unfolded_sbl").level == level  # restored
