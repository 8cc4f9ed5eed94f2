"""Real-time source imaging of a live EEG stream (Lab Streaming Layer, ``mne-lsl``).

:class:`SourceStream` connects to an LSL EEG stream, keeps its samples in
``mne_lsl``'s ring buffer, and solves a sliding window (``window`` seconds every
``hop`` seconds) with any estimator of the package.  Each window yields a
:class:`Window`: its LSL timestamps, the estimate, its peak, the compute time and
the end-to-end latency (newest sample's timestamp to result, on the LSL clock).

A live recording misbehaves: a channel goes flat or noisy (it is left out of the
windows where it is, warned once, as ``apply`` and ``localize`` drop bad
channels), the stream has a gap or stalls, a window cannot be solved.  Each such
window says why in :attr:`Window.skipped` and the stream goes on.
"""

from __future__ import annotations

import csv
import logging
import time
from dataclasses import dataclass, field

import numpy as np

logger = logging.getLogger("unfolded_sbl")

#: A stream whose timestamps jump by more than this many sample periods has a gap.
GAP_PERIODS = 2.5
#: Seconds without a new sample before a window is reported as a stall.
STALL_SECONDS = 2.0
CSV_COLUMNS = ("window", "t_start", "t_end", "n_channels", "peak_source", "hemisphere",
               "region", "x_mm", "y_mm", "z_mm", "amplitude_nAm", "compute_ms",
               "latency_ms", "classical_fallback", "skipped")


@dataclass
class Window:
    """One solved (or skipped) window of a stream.

    Attributes
    ----------
    index : int
        Window number, from 0.
    t_start, t_end : float
        LSL timestamps of the window's first and newest sample (s).
    channels : tuple of str
        The channels solved (bad ones of this window left out).
    sources : ndarray, shape (n_sources, n_times) | None
        The estimate in A m (None when skipped).
    peak : dict | None
        ``source``, ``hemisphere``, ``region``, ``x_mm``, ``y_mm``, ``z_mm``
        (MNI-like) and ``amplitude_nAm`` of the strongest source at the window's
        time of maximal power.
    compute_ms : float
        Time of the estimator's ``predict``.
    latency_ms : float
        From the newest sample's timestamp to the result (LSL clock).
    classical_fallback : bool
        A learned model's regime check solved this window classically.
    skipped : str
        Why the window was not solved ("" when it was).
    data : ndarray | None
        The window's data as solved, (n_channels, n_times) in volts
        (``SourceStream(keep_data=True)`` only).
    """

    index: int
    t_start: float
    t_end: float
    channels: tuple = ()
    sources: np.ndarray | None = None
    peak: dict | None = None
    compute_ms: float = float("nan")
    latency_ms: float = float("nan")
    classical_fallback: bool = False
    skipped: str = ""
    data: np.ndarray | None = field(default=None, repr=False)

    def row(self):
        """The window as a row of ``CSV_COLUMNS``."""
        peak = self.peak or {}
        return {"window": self.index, "t_start": f"{self.t_start:.4f}",
                "t_end": f"{self.t_end:.4f}", "n_channels": len(self.channels),
                "peak_source": peak.get("source", ""), "hemisphere": peak.get("hemisphere", ""),
                "region": peak.get("region", ""), "x_mm": peak.get("x_mm", ""),
                "y_mm": peak.get("y_mm", ""), "z_mm": peak.get("z_mm", ""),
                "amplitude_nAm": peak.get("amplitude_nAm", ""),
                "compute_ms": f"{self.compute_ms:.2f}", "latency_ms": f"{self.latency_ms:.2f}",
                "classical_fallback": int(self.classical_fallback), "skipped": self.skipped}


def gap_in(timestamps, sfreq):
    """The largest jump between consecutive timestamps, in s, when it exceeds
    :data:`GAP_PERIODS` sample periods (a gap in the stream), else 0."""
    if len(timestamps) < 2:
        return 0.0
    jump = float(np.max(np.diff(timestamps)))
    return jump if jump > GAP_PERIODS / sfreq else 0.0


def bad_channels(data, ch_names):
    """Channels of ``data`` (n_channels, n_times) that are flat, noisy or not finite in
    this window (:func:`unfolded_sbl.quality.check_channels`), as {name: problem}."""
    from .quality import check_channels

    finite = np.all(np.isfinite(data), axis=1)
    bad = {name: "not finite" for name, ok in zip(ch_names, finite) if not ok}
    good = [name for name in ch_names if name not in bad]
    if good:
        rows = data[finite]
        for finding in check_channels(rows[None], good):
            if finding["problem"] in ("flat", "noisy"):
                bad[finding["channel"]] = finding["problem"]
    return bad


class SourceStream:
    """Source estimates of a live LSL EEG stream, window by window.

    Parameters
    ----------
    name : str
        The LSL stream's name.
    model : str | estimator
        ``"deep-cb-joint"`` (default: the shipped Deep CB through onnxruntime),
        another shipped model, ``"ClassicalCB"``, ``"sLORETA"`` or an unfitted
        estimator with a ``forward`` parameter, as :func:`unfolded_sbl.apply`.
    forward : str | ForwardModel | mne.Forward | None
        Forward model holding the stream's channels; default as ``localize``
        resolves it for a file: a shipped template, else one built offline for
        the stream's channels (names, or positions of ``montage`` or of the
        stream's own description).
    montage : str | mne.channels.DigMontage | None
        Electrode positions for channels that are not standard 10-05 names.
    window, hop : float
        Window length and step in seconds (defaults: 200 ms every 100 ms, for
        evoked activity and neurofeedback).
    bufsize : float
        Seconds of the stream kept in the ring buffer.
    source_id : str | None
        The stream's LSL source id, to tell streams of the same name apart.
    timeout : float
        Seconds to wait for the stream when connecting.
    keep_data : bool
        Keep each window's data in :attr:`Window.data` (tests, inspection).

    Examples
    --------
    A stream played from a file on this machine (``mne_lsl.player.PlayerLSL``)::

        from mne_lsl.player import PlayerLSL
        import unfolded_sbl as us

        player = PlayerLSL("recording.fif", name="eeg").start()
        with us.realtime.SourceStream("eeg", model="ClassicalCB") as stream:
            for window in stream.windows(duration=10):
                print(window.t_end, window.peak, window.latency_ms)
        player.stop()
    """

    def __init__(self, name, model="deep-cb-joint", forward=None, montage=None, window=0.2,
                 hop=0.1, bufsize=5.0, source_id=None, timeout=10.0, keep_data=False):
        self.name = name
        self.model = model
        self.forward = forward
        self.montage = montage
        self.window = window
        self.hop = hop
        self.bufsize = bufsize
        self.source_id = source_id
        self.timeout = timeout
        self.keep_data = keep_data

    # -- connection ------------------------------------------------------------------
    def connect(self):
        """Connect to the stream and build the solver for its EEG channels (before the
        first window, so that the first window is not slowed by it)."""
        from mne_lsl.stream import StreamLSL

        from .mne_io import _montage_positions

        for value, label in ((self.window, "window"), (self.hop, "hop")):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
                raise ValueError(f"{label} must be a positive number of seconds, got {value!r}")
        if self.bufsize < self.window:
            raise ValueError(f"bufsize ({self.bufsize} s) must hold a window "
                             f"({self.window} s)")
        self.stream_ = StreamLSL(self.bufsize, name=self.name, source_id=self.source_id)
        self.stream_.connect(acquisition_delay=0.001, timeout=self.timeout)
        if self.montage is not None:
            self.stream_.set_montage(self.montage)
        info = self.stream_.info
        self.sfreq_ = float(info["sfreq"])
        if not self.sfreq_ > 0:
            raise ValueError(f"stream {self.name!r} has an irregular rate: a sliding window "
                             "needs a sampling frequency")
        eeg = [name for name, kind in zip(self.stream_.ch_names,
                                           self.stream_.get_channel_types()) if kind == "eeg"]
        if not eeg:
            raise ValueError(f"stream {self.name!r} has no EEG channels "
                             f"(its channels: {self.stream_.ch_names[:10]}...)")
        self.ch_names_ = eeg
        self.n_window_ = max(1, int(round(self.window * self.sfreq_)))
        self._positions = _montage_positions(self.stream_, eeg)
        self._solvers = {}
        self._solver(tuple(eeg))
        self._warned = set()
        return self

    def _solver(self, channels):
        """(estimator, forward, MNI-like source coordinates) for ``channels``, cached."""
        if channels not in self._solvers:
            from .localize import mni_like_coordinates
            from .mne_io import _make_estimator, forward_for_channels

            fwd = forward_for_channels(list(channels), self.forward,
                                       positions=self._positions, log=logger.info)
            try:
                xyz = mni_like_coordinates(fwd)
            except ValueError:  # not an fsaverage surface source space: no coordinates
                xyz = None
            estimator = _make_estimator(self.model, fwd)
            # one solve of noise now: first calls pay for allocations and thread pools
            noise = np.random.default_rng(0).normal(size=(1, len(channels), self.n_window_))
            estimator.predict(1e-6 * noise)
            self._solvers[channels] = (estimator, fwd, xyz)
        return self._solvers[channels]

    def close(self):
        """Disconnect from the stream."""
        stream = getattr(self, "stream_", None)
        if stream is not None and stream.connected:
            stream.disconnect()

    def __enter__(self):
        return self.connect()

    def __exit__(self, *exc):
        self.close()

    # -- windows ---------------------------------------------------------------------
    def windows(self, duration=None, max_windows=None):
        """Yield a :class:`Window` every ``hop`` seconds of stream.

        Parameters
        ----------
        duration : float | None
            Stop after this many seconds of stream time (None: until closed).
        max_windows : int | None
            Stop after this many windows.
        """
        from mne_lsl.lsl import local_clock

        if not hasattr(self, "stream_"):
            raise RuntimeError("call connect() first, or use the SourceStream in a "
                               "with-block")
        index, first, last_end = 0, None, None
        started = time.perf_counter()
        while max_windows is None or index < max_windows:
            # a stream that stopped does not advance its own clock: bound by the wall's
            if duration is not None and (time.perf_counter() - started
                                         > duration + 2 * STALL_SECONDS):
                return
            waited = self._wait_for_hop()
            data, stamps = self.stream_.get_data(winsize=self.window, picks=self.ch_names_)
            if len(stamps) < self.n_window_ or not waited:
                if waited is False and len(stamps):
                    yield Window(index, float(stamps[0]), float(stamps[-1]),
                                 skipped=f"no new sample for {STALL_SECONDS:.0f} s")
                    index += 1
                    continue
                time.sleep(self.hop / 4)  # the buffer is still filling
                continue
            first = stamps[-1] if first is None else first
            if last_end is not None and stamps[-1] <= last_end:
                continue  # nothing newer than the last window
            last_end = stamps[-1]
            yield self._solve(index, data, stamps, local_clock)
            index += 1
            if duration is not None and stamps[-1] - first >= duration - 1e-9:
                return

    def _wait_for_hop(self):
        """Wait until a hop of new samples arrived; False after a stall."""
        n_hop = max(1, int(round(self.hop * self.sfreq_)))
        start = time.perf_counter()
        while self.stream_.n_new_samples < n_hop:
            if time.perf_counter() - start > STALL_SECONDS:
                return False
            time.sleep(min(self.hop / 20, 0.005))
        return True

    def _solve(self, index, data, stamps, clock):
        window = Window(index, float(stamps[0]), float(stamps[-1]))
        gap = gap_in(stamps, self.sfreq_)
        if gap:
            window.skipped = f"gap of {1e3 * gap:.0f} ms in the stream"
            return window
        bad = bad_channels(data, self.ch_names_)
        for name, problem in bad.items():
            if name not in self._warned:
                logger.warning("stream %s: channel %s is %s; left out of the windows where "
                               "it is", self.name, name, problem)
                self._warned.add(name)
        keep = [i for i, name in enumerate(self.ch_names_) if name not in bad]
        window.channels = tuple(self.ch_names_[i] for i in keep)
        if len(keep) < 3:
            window.skipped = f"{len(keep)} good channels"
            return window
        Y = data[keep].astype(np.float64)
        try:
            estimator, fwd, xyz = self._solver(window.channels)
            start = time.perf_counter()
            sources = estimator.predict(Y[None])[0]
            window.compute_ms = 1e3 * (time.perf_counter() - start)
        except Exception as err:  # a window that cannot be solved is reported, not fatal
            window.skipped = f"could not solve: {type(err).__name__}: {err}"[:200]
            return window
        window.latency_ms = 1e3 * (clock() - stamps[-1])
        window.sources = sources
        window.classical_fallback = bool(
            np.any(getattr(estimator, "classical_fallback_", False)))
        window.peak = _peak(sources, fwd, xyz)
        if self.keep_data:
            window.data = Y
        return window


def _peak(sources, fwd, xyz):
    """The strongest source at the time of maximal power: its index, hemisphere,
    approximate region, MNI-like position and amplitude (nA m)."""
    from .localize import approximate_lobe

    t_peak = int(np.argmax((sources ** 2).sum(axis=0)))
    idx = int(np.argmax(np.abs(sources[:, t_peak])))
    peak = {"source": idx, "amplitude_nAm": float(f"{1e9 * sources[idx, t_peak]:.4g}")}
    if xyz is not None:
        peak.update(hemisphere="left" if idx < len(fwd.vertices[0]) else "right",
                    region=approximate_lobe(xyz[idx]),
                    **{f"{axis}_mm": round(float(v), 1) for axis, v in zip("xyz", xyz[idx])})
    return peak


class WindowWriter:
    """``PREFIX-windows.csv``, one row per window, flushed as each arrives, so that an
    interrupted stream leaves a complete file."""

    def __init__(self, path):
        self.path = path
        self._file = open(path, "w", newline="")
        self._writer = csv.DictWriter(self._file, fieldnames=CSV_COLUMNS)
        self._writer.writeheader()
        self._file.flush()

    def write(self, window):
        self._writer.writerow(window.row())
        self._file.flush()

    def close(self):
        self._file.close()


def peak_outlet(name):
    """An LSL outlet ``NAME-sources`` (irregular rate) for per-window results: peak
    source, x, y, z (mm), amplitude (nA m), compute and latency (ms), fallback."""
    from mne_lsl.lsl import StreamInfo, StreamOutlet

    info = StreamInfo(f"{name}-sources", "SourcePeak", 8, 0.0, "float64",
                      f"unfolded-sbl-{name}")
    info.set_channel_names(["source", "x_mm", "y_mm", "z_mm", "amplitude_nAm",
                            "compute_ms", "latency_ms", "classical_fallback"])
    return StreamOutlet(info)


def push_window(outlet, window):
    """Push a solved window's peak to :func:`peak_outlet`'s outlet (skipped: nothing)."""
    if window.skipped or window.peak is None:
        return
    peak = window.peak
    outlet.push_sample(np.array([peak["source"], peak.get("x_mm", np.nan),
                                 peak.get("y_mm", np.nan), peak.get("z_mm", np.nan),
                                 peak["amplitude_nAm"], window.compute_ms,
                                 window.latency_ms, float(window.classical_fallback)]),
                       timestamp=window.t_end)


def replay(path, name, montage=None, chunk_size=10):
    """Start a ``mne_lsl.player.PlayerLSL`` that streams a recording (any file MNE
    reads as raw data) as the LSL stream ``name``; returns the started player."""
    import mne
    from mne_lsl.player import PlayerLSL

    raw = mne.io.read_raw(path, preload=True, verbose=False)
    if montage is not None:
        raw.set_montage(montage, on_missing="warn", verbose=False)
    return PlayerLSL(raw, chunk_size=chunk_size, name=name, source_id=name).start()


def run(name, model="deep-cb-joint", window=0.2, hop=0.1, duration=None, out=None,
        replay_file=None, outlet=False, montage=None, forward=None, log=print):
    """The ``unfolded-sbl stream`` command: solve a stream window by window, write
    ``OUT-windows.csv`` as it goes and optionally push each result to an LSL outlet;
    Ctrl-C ends the stream with the CSV complete.  Returns the windows' count."""
    player = replay(replay_file, name, montage) if replay_file else None
    writer = WindowWriter(f"{out or name}-windows.csv")
    count, skipped, latencies = 0, 0, []
    try:
        with SourceStream(name, model=model, forward=forward, montage=montage, window=window,
                          hop=hop, source_id=name if player else None) as stream:
            results = peak_outlet(name) if outlet else None
            log(f"stream {name}: {len(stream.ch_names_)} EEG channels at "
                f"{stream.sfreq_:g} Hz, {1e3 * window:.0f} ms windows every "
                f"{1e3 * hop:.0f} ms, {model}")
            try:
                for result in stream.windows(duration=duration):
                    writer.write(result)
                    count += 1
                    skipped += bool(result.skipped)
                    if not result.skipped:
                        latencies.append(result.latency_ms)
                    if results is not None:
                        push_window(results, result)
            except KeyboardInterrupt:
                log("interrupted: the stream ends here")
    finally:
        writer.close()
        if player is not None:
            player.stop()
    median = f", median latency {np.median(latencies):.1f} ms" if latencies else ""
    log(f"{count} windows ({skipped} skipped){median}: {writer.path}")
    return count
