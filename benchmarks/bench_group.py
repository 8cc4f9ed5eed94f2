"""Many recordings at once: wall time of ``unfolded-sbl localize`` on a group of
simulated recordings with ``--n-jobs 1`` and ``2`` (one run).

    python -m benchmarks.bench_group [--recordings 20] [--model ClassicalCB]

Each recording is ``--seconds`` of simulated 64-channel EEG (100 Hz, the default cap)
with a 'stim' event every second, epoched and averaged by ``localize``; the outputs
are the peak tables and the group summary (``--formats csv``), so the time is reading,
epoching and solving.
Writes the ``group`` section of benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import tempfile
import time
from pathlib import Path

import numpy as np

import unfolded_sbl as us
from benchmarks._results import write_section


def _recordings(folder, n, seconds):
    import mne

    fwd = us.load_forward()
    events = np.arange(1.0, seconds - 1.0)
    for i in range(n):
        data = us.simulate(fwd, 1, random_state=i, n_times=int(100 * seconds))
        raw = mne.io.RawArray(data.sensors[0], mne.create_info(fwd.ch_names, 100.0, "eeg"),
                              verbose=False)
        raw.set_montage("biosemi64", verbose=False)
        raw.set_annotations(mne.Annotations(events, [0.0] * len(events),
                                            ["stim"] * len(events)))
        raw.save(Path(folder) / f"rec{i:02d}_raw.fif", verbose=False)


def main(argv=None):
    from unfolded_sbl.cli import main as cli

    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recordings", type=int, default=20)
    parser.add_argument("--model", default="ClassicalCB")
    parser.add_argument("--seconds", type=float, default=30.0,
                        help="length of each recording (one event per second)")
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args(argv)
    seconds = {}
    with tempfile.TemporaryDirectory() as tmp:
        _recordings(tmp, args.recordings, args.seconds)
        for jobs in (1, 2):
            start = time.perf_counter()
            with contextlib.redirect_stdout(io.StringIO()):
                code = cli(["localize", f"{tmp}/rec*_raw.fif", "--event", "stim",
                            "--model", args.model, "--formats", "csv",
                            "--out", f"{tmp}/out{jobs}", "--n-jobs", str(jobs)])
            seconds[jobs] = time.perf_counter() - start
            if code != 0:
                raise RuntimeError(f"localize failed with --n-jobs {jobs}")
    body = (f"`python -m benchmarks.bench_group`: `unfolded-sbl localize` on {args.recordings} "
            f"simulated 64-channel recordings ({args.seconds:.0f} s at 100 Hz, an event every "
            f"second, epoched and averaged), {args.model}, peak tables and the group summary. "
            "With `--n-jobs 2` the recordings go to two worker processes (joblib), each of "
            "which first imports the package and opens its solver.\n\n"
            "| --n-jobs | wall time (s) | per recording (s) | speed-up |\n|---|---|---|---|\n"
            + "\n".join(f"| {j} | {s:.1f} | {s / args.recordings:.2f} | "
                        f"{seconds[1] / s:.2f} |" for j, s in seconds.items()))
    print(body)
    if not args.no_write:
        write_section("group", "Many recordings at once", body,
                      {str(k): v for k, v in seconds.items()})


if __name__ == "__main__":
    main()
