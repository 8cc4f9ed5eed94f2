"""Real-time source imaging: a recording replayed as a live LSL stream by mne-lsl's
PlayerLSL in another process, solved window by window."""

import csv
import logging
import os
import subprocess
import sys
import textwrap
import time
import uuid

import numpy as np
import pytest

import unfolded_sbl as us
from unfolded_sbl import realtime

pytest.importorskip("mne_lsl")


@pytest.fixture(scope="module", autouse=True)
def link_scoped_lsl(tmp_path_factory):
    """LSL resolves streams on this machine's link only (no network beyond it)."""
    config = tmp_path_factory.mktemp("lsl") / "lsl_api.cfg"
    config.write_text("[multicast]\nResolveScope = link\n[ports]\nIPv6 = disable\n")
    before = os.environ.get("LSLAPICFG")
    os.environ["LSLAPICFG"] = str(config)
    yield
    if before is None:
        os.environ.pop("LSLAPICFG", None)
    else:
        os.environ["LSLAPICFG"] = before


def _recording(tmp_path, flat_after=None, seconds=8.0):
    """A 64-channel simulated recording (250 Hz) as a raw .fif; ``flat_after`` (s):
    channel F5 goes flat from then on."""
    import mne

    fwd = us.load_forward()
    sfreq = 250.0
    data = us.simulate(fwd, 1, n_times=int(seconds * sfreq), sfreq=sfreq,
                       random_state=0).sensors[0]
    if flat_after is not None:
        data[fwd.ch_names.index("F5"), int(flat_after * sfreq):] = 0.0
    raw = mne.io.RawArray(data, mne.create_info(fwd.ch_names, sfreq, "eeg"), verbose=False)
    raw.set_montage("biosemi64")
    path = tmp_path / "recording_raw.fif"
    raw.save(path, overwrite=True, verbose=False)
    return path


PLAYER = textwrap.dedent("""
    import sys, time
    from mne_lsl.player import PlayerLSL
    player = PlayerLSL(sys.argv[1], chunk_size=10, name=sys.argv[2], source_id=sys.argv[2],
                       n_repeat=1).start()
    time.sleep(float(sys.argv[3]))
    player.stop()
""")


@pytest.fixture
def player(tmp_path):
    """Start a player process on a recording; yields (start(path) -> name)."""
    processes = []

    def start(path, seconds=30.0):
        name = f"unfolded-sbl-test-{uuid.uuid4().hex[:8]}"
        processes.append(subprocess.Popen([sys.executable, "-c", PLAYER, str(path), name,
                                           str(seconds)], env=dict(os.environ)))
        return name

    yield start
    for process in processes:
        process.terminate()
        process.wait(timeout=10)


def test_windows_arrive_in_order_and_equal_the_offline_estimate(tmp_path, player):
    name = player(_recording(tmp_path))
    duration, hop = 2.0, 0.1
    with realtime.SourceStream(name, model="ClassicalCB", source_id=name, hop=hop,
                               keep_data=True) as stream:
        windows = list(stream.windows(duration=duration))
        assert stream.n_window_ == 50
        fwd = stream._solver(tuple(stream.ch_names_))[1]
    assert not stream.stream_.connected  # closed by the with-block
    ends = np.array([w.t_end for w in windows])
    assert np.all(np.diff(ends) >= hop - 1.5 / 250)  # in order, a hop apart at least
    # every hop solved, unless the machine fell behind (then the newest window)
    assert duration / hop / 3 <= len(windows) <= duration / hop + 2
    assert ends[-1] - ends[0] >= duration - 1e-6
    classical = us.ClassicalCB(fwd).fit()
    for window in windows[:4]:
        assert not window.skipped and window.data.shape == (64, 50)
        expected = classical.predict(window.data[None])[0]
        assert np.linalg.norm(window.sources - expected) <= 1e-5 * np.linalg.norm(expected)
        assert window.compute_ms > 0 and np.isfinite(window.latency_ms)
        assert window.peak["hemisphere"] in ("left", "right") and "x_mm" in window.peak


def test_a_channel_that_goes_flat_is_left_out_and_warned_once(tmp_path, player, caplog):
    # the player starts before this test connects: F5 goes flat well after that
    name = player(_recording(tmp_path, flat_after=6.0, seconds=12.0))
    with caplog.at_level(logging.WARNING, logger="unfolded_sbl"):
        with realtime.SourceStream(name, model="ClassicalCB", source_id=name) as stream:
            windows = list(stream.windows(duration=5.0))
    counts = [len(w.channels) for w in windows]
    assert 64 in counts and counts[-1] == 63 and not any(w.skipped for w in windows)
    assert caplog.text.count("channel F5 is flat") == 1
    assert "F5" not in windows[-1].channels


def test_gaps_and_bad_samples_are_named():
    stamps = np.arange(50) / 250.0
    assert realtime.gap_in(stamps, 250.0) == 0.0
    stamps[25:] += 0.3
    assert realtime.gap_in(stamps, 250.0) == pytest.approx(0.304)
    data = np.random.default_rng(0).normal(size=(8, 50))
    data[2, 10] = np.nan
    data[5] = 0.0
    names = [f"E{i}" for i in range(8)]
    assert realtime.bad_channels(data, names) == {"E2": "not finite", "E5": "flat"}


def test_stream_command_replays_a_file_and_writes_a_complete_csv(tmp_path, capsys):
    from unfolded_sbl.cli import main

    name = f"unfolded-sbl-test-{uuid.uuid4().hex[:8]}"
    out = tmp_path / "s"
    assert main(["stream", name, "--replay", str(_recording(tmp_path)), "--duration", "2",
                 "--model", "ClassicalCB", "--out", str(out), "--outlet"]) == 0
    with open(f"{out}-windows.csv") as fid:
        rows = list(csv.DictReader(fid))
    assert tuple(rows[0]) == realtime.CSV_COLUMNS
    assert len(rows) >= 5 and all(float(r["compute_ms"]) > 0 for r in rows)
    assert [int(r["window"]) for r in rows] == list(range(len(rows)))
    assert f"{len(rows)} windows" in capsys.readouterr().out


def test_ctrl_c_ends_the_stream_with_the_csv_complete(tmp_path, monkeypatch):
    stop_after = 3

    def interrupted(self, duration=None, max_windows=None):
        for i in range(stop_after):
            yield realtime.Window(i, float(i), float(i) + 0.2, skipped="test")
        raise KeyboardInterrupt

    monkeypatch.setattr(realtime.SourceStream, "windows", interrupted)
    name = f"unfolded-sbl-test-{uuid.uuid4().hex[:8]}"
    count = realtime.run(name, model="ClassicalCB", replay_file=_recording(tmp_path),
                         out=str(tmp_path / "c"), log=lambda *a: None)
    with open(tmp_path / "c-windows.csv") as fid:
        assert count == stop_after == len(list(csv.DictReader(fid)))


def test_bad_parameters_are_refused_before_connecting():
    for kwargs, match in (({"window": 0}, "window must be a positive"),
                          ({"hop": -1}, "hop must be a positive"),
                          ({"window": 1.0, "bufsize": 0.5}, "bufsize")):
        with pytest.raises(ValueError, match=match):
            realtime.SourceStream("none", **kwargs).connect()
    with pytest.raises(RuntimeError, match="connect"):
        next(realtime.SourceStream("none").windows())


def test_a_stream_that_stops_is_reported_and_the_duration_still_ends(tmp_path, player):
    """The player plays 3 s once and stops: windows after it say the stream stalled,
    and a duration longer than the recording still ends (by the wall clock)."""
    name = player(_recording(tmp_path, seconds=3.0), seconds=3.0)
    start = time.perf_counter()
    with realtime.SourceStream(name, model="sLORETA", source_id=name) as stream:
        windows = list(stream.windows(duration=6.0))
    assert time.perf_counter() - start < 6.0 + 3 * realtime.STALL_SECONDS + 10
    assert any("no new sample" in w.skipped for w in windows)
