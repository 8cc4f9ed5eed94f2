"""Many recordings at once: a glob or a BIDS dataset, in parallel, with a group summary."""

import csv

import pytest

import unfolded_sbl as us
from unfolded_sbl import cli

mne = pytest.importorskip("mne")
mne_bids = pytest.importorskip("mne_bids")


def _raw(fwd, seed):
    data = us.simulate(fwd, 1, random_state=seed, n_times=400)
    info = mne.create_info(fwd.ch_names, 100.0, "eeg")
    raw = mne.io.RawArray(data.sensors[0], info, verbose=False)
    raw.set_montage("biosemi64", verbose=False)
    raw.set_annotations(mne.Annotations([1.0, 2.0, 3.0], [0.0] * 3, ["stim"] * 3))
    return raw


@pytest.fixture(scope="module")
def bids_root(tmp_path_factory, fwd):
    """A BIDS dataset written with mne-bids: three subjects of simulated EEG, and a fourth
    whose recording has no 'stim' event (a bad recording)."""
    root = tmp_path_factory.mktemp("bids")
    for i, subject in enumerate(("01", "02", "03", "04")):
        raw = _raw(fwd, i)
        if subject == "04":
            raw.set_annotations(mne.Annotations([1.0], [0.0], ["other"]))
        path = mne_bids.BIDSPath(subject=subject, task="test", datatype="eeg", root=root)
        mne_bids.write_raw_bids(raw, path, format="BrainVision", allow_preload=True,
                                verbose=False)
    return root


def _summary(path):
    with open(path, newline="") as fid:
        return list(csv.DictReader(fid))


@pytest.mark.parametrize("n_jobs", [1, 2])
def test_bids_dataset_is_localised_with_a_summary_and_a_bad_recording_reported(
        bids_root, tmp_path, capsys, n_jobs):
    out = tmp_path / "group"
    code = cli.main(["localize", "--bids-root", str(bids_root), "--task", "test",
                     "--event", "stim", "--formats", "csv", "--n-jobs", str(n_jobs),
                     "--out", str(out)])
    assert code == 0
    rows = _summary(out / "group-summary.csv")
    assert [r["recording"].split("/")[-1] for r in rows] == [
        f"sub-{s}_task-test_eeg.vhdr" for s in ("01", "02", "03", "04")]
    assert [r["status"] for r in rows] == ["ok", "ok", "ok", "failed"]
    assert "event 'stim' is not in the recording" in rows[3]["error"]
    assert all(r["solver"] == "ClassicalCB" and r["region"] for r in rows[:3])
    printed = capsys.readouterr().out
    assert "3 of 4 recordings localised" in printed
    # each recording's own outputs, and the same peak as localising it alone
    first = out / "sub-01_task-test_eeg-ClassicalCB-peaks.csv"
    assert first.exists()
    alone = tmp_path / "alone"
    raw = mne_bids.read_raw_bids(mne_bids.BIDSPath(subject="01", task="test", datatype="eeg",
                                                   root=bids_root), verbose=False)
    evoked = us.read_recording(raw, event="stim")
    stc, used = us.apply(evoked, return_forward=True)
    from unfolded_sbl.localize import write_outputs

    peaks, _ = write_outputs(stc, used, alone, formats=("csv",))
    assert rows[0]["region"] == peaks[0]["region"]
    assert float(rows[0]["x_mm"]) == pytest.approx(peaks[0]["x_mm"])


def test_several_files_and_a_glob(fwd, tmp_path, capsys):
    for i in range(2):
        raw = _raw(fwd, 10 + i)
        raw.save(tmp_path / f"rec{i}_raw.fif", verbose=False)
    out = tmp_path / "out"
    assert cli.main(["localize", str(tmp_path / "rec*_raw.fif"), "--event", "stim",
                     "--formats", "csv", "--out", str(out)]) == 0
    rows = _summary(out / "group-summary.csv")
    assert [r["status"] for r in rows] == ["ok", "ok"]
    assert cli.main(["localize", str(tmp_path / "nothing*.fif")]) == 2
    assert "no recording matches" in capsys.readouterr().err
