"""Command-line interface: unfolded-sbl {localize,stream,demo,simulate,forward,train,export}.

The shipped models are retrained with ``python -m unfolded_sbl.zoo`` (maintainers).
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import sys
import time
from pathlib import Path


def _cmd_forward(args):
    from .forward import list_forwards, load_forward

    if args.action == "list":
        for name in list_forwards():
            fwd = load_forward(name)
            print(f"{name:28s} {fwd.n_channels:4d} channels  {fwd.n_sources:5d} sources")
    elif args.action == "info":
        fwd = load_forward(args.name)
        print(fwd)
        print("channels:", " ".join(fwd.ch_names))
    else:  # build
        from .templates import build_templates

        build_templates(out_dir=args.out, caps=args.caps, spacings=args.spacings,
                        bem_ico=args.bem_ico)
    return 0


def _cmd_models(args):
    from .pretrained import list_pretrained

    print("ClassicalCB and sLORETA: the classical solvers (no training; ClassicalCB is the "
          "default of localize).\nShipped learned models, with their rMSE ratio to "
          "ClassicalCB-25 in the robustness matrix (python -m benchmarks.robustness; "
          "below 1 is better):")
    for row in list_pretrained(details=True):
        loses = ", ".join(f"{k} {v:.2f}" for k, v in (row["loses"] or {}).items()) or "none"
        print(f"\n{row['name']}: {row['description']}\n  trained on: {row['prior']}\n"
              f"  median ratio {row['median_ratio']}, nominal {row['nominal']}, perturbed "
              f"{row['perturbed']}\n  loses (ratio above 1.005): {loses}\n"
              f"  supports: {row['supports']}")
    return 0


def _cmd_simulate(args):
    from .simulate import simulate_to_file

    start = time.perf_counter()
    data = simulate_to_file(args.out, forward=args.forward, n_samples=args.n_samples,
                            random_state=args.seed, n_times=args.n_times,
                            snr_db=tuple(args.snr_db))
    print(f"wrote {len(data)} samples ({data.sensors.shape[1]} channels, "
          f"{data.sources.shape[1]} sources, {data.sensors.shape[2]} times) to {args.out} "
          f"in {time.perf_counter() - start:.1f} s")
    return 0


#: Timed predictions per estimator in the demo, after the scored warm-up call.
DEMO_TIMING_REPEATS = 3


def _cmd_demo(args):
    from .estimators import SLORETA, ClassicalCB
    from .evaluation import TABLE_NOTE, TIMING_NOTE, evaluate, format_table
    from .forward import load_forward
    from .simulate import simulate

    fwd = load_forward(args.forward)
    print(f"forward model: {fwd}")
    data = simulate(fwd, args.n_samples, random_state=args.seed)
    print(f"simulated {args.n_samples} samples (seed {args.seed}), "
          f"{data.sensors.shape[2]} time points")
    estimators = {
        "sLORETA": SLORETA(fwd).fit(),
        "ClassicalCB (joint noise)": ClassicalCB(fwd, noise="learn").fit(),
        "ClassicalCB (known noise)": ClassicalCB(fwd, noise="known").fit(),
    }
    known_noise_models = ["ClassicalCB (known noise)"]
    from .pretrained import list_pretrained, load_pretrained

    # models for another source spacing (e.g. ico4) would only repeat ClassicalCB here
    for name in list_pretrained(fwd):
        model = load_pretrained(name, forward=fwd, backend="onnx")
        estimators[f"{name} (onnx, {model.provider_.replace('ExecutionProvider', '')})"] = model
        if not model.learn_noise_:
            known_noise_models.append(f"{name} (onnx, "
                                      f"{model.provider_.replace('ExecutionProvider', '')})")
    kwargs = {k: {"noise_var": data.noise_var} for k in known_noise_models}
    rows = evaluate(estimators, data, fwd, kwargs, timing_repeats=DEMO_TIMING_REPEATS)
    print(format_table(rows))
    print(TABLE_NOTE)
    print(TIMING_NOTE.format(k=DEMO_TIMING_REPEATS))
    print("The samples come from the paper's simulator (focal patches), the training prior "
          "of deep-cb-joint-focal: a model's rank here is not its rank on wide patches or "
          "recorded EEG ('unfolded-sbl models' lists where each loses)")
    if args.png:
        from .metrics import rms_map
        from .viz import plot_source_maps

        shown = ["ClassicalCB (joint noise)"] + [k for k in estimators if "deep-cb-joint" in k]
        maps = [rms_map(data.sources[0])] + [
            rms_map(estimators[k].predict(data.sensors[:1])[0]) for k in shown]
        plot_source_maps(maps, fwd, titles=["truth"] + [k.split(" (")[0] for k in shown],
                         fname=args.png)
        print(f"wrote {args.png}: truth beside the estimates of sample 0")
        import mne

        from .localize import format_report, peak_report

        for title, source_map in zip(["truth"] + shown, maps):
            stc = mne.SourceEstimate(source_map[:, None], fwd.vertices, tmin=0.0, tstep=1.0)
            print(format_report(peak_report(stc, fwd, n_peaks=3),
                                header=f"{title}: strongest sources (temporal RMS)"))
    return 0


def _cmd_localize(args):
    recordings = _recordings(args)
    if len(recordings) == 1 and args.bids_root is None:
        prefix = args.out or f"{Path(recordings[0]).name.split('.')[0]}-{args.model}"
        _localize_one(recordings[0], args, prefix, print)
        return 0
    return _localize_group(recordings, args)


def _recordings(args):
    """The recordings named on the command line (globs expanded) and found in a BIDS
    dataset (``--bids-root`` with ``--task``, ``--subjects``, ``--sessions``)."""
    import glob

    found = []
    for pattern in args.recording:
        matches = sorted(glob.glob(pattern)) if glob.has_magic(pattern) else [pattern]
        if not matches:
            raise FileNotFoundError(f"no recording matches {pattern}")
        found += matches
    if args.bids_root is not None:
        from mne_bids import find_matching_paths

        paths = find_matching_paths(args.bids_root, subjects=args.subjects,
                                    sessions=args.sessions, tasks=args.task,
                                    datatypes="eeg", suffixes="eeg",
                                    extensions=[".vhdr", ".edf", ".bdf", ".set", ".fif"])
        if not paths:
            raise FileNotFoundError(f"no EEG recording in the BIDS dataset {args.bids_root} "
                                    "for these subjects, sessions and task")
        found += paths  # BIDSPath: read with their events.tsv (read_raw_bids)
    if not found:
        raise ValueError("give a recording, several, a glob, or --bids-root")
    return found


def _localize_one(recording, args, prefix, echo):
    """Localise one recording as ``localize`` does; returns its group-summary row."""
    from .localize import (
        format_report,
        on_fsaverage_surface,
        output_units,
        read_recording,
        write_outputs,
    )
    from .mne_io import apply

    start = time.perf_counter()
    condition = int(args.condition) if str(args.condition).isdigit() else args.condition
    source = recording
    if hasattr(recording, "fpath"):  # a BIDS recording
        from mne_bids import read_raw_bids

        source = read_raw_bids(recording, verbose=False)
        recording = recording.fpath
    inst = read_recording(source, montage=args.montage, event=args.event,
                          condition=condition, tmin=args.epoch[0], tmax=args.epoch[1],
                          l_freq=args.l_freq, h_freq=args.h_freq, picks=args.picks or "eeg")
    baseline = None if args.no_baseline else tuple(
        None if v is None else float(v) for v in args.baseline)
    if baseline is not None and inst.times[0] >= 0:
        echo("baseline: none (the recording has no pre-stimulus samples)")
        baseline = None
    else:
        echo("baseline: " + ("none (--no-baseline)" if baseline is None else
                             f"{_interval(baseline)} (mean removed per channel)"))
    noise_cov = args.noise_cov
    if noise_cov not in (None, "baseline"):
        import mne

        noise_cov = mne.read_cov(_existing(noise_cov), verbose=False)
    with _info_to_stdout() if echo is print else contextlib.nullcontext():
        stc, forward = apply(inst, model=args.model, forward=args.forward, tmin=args.tmin,
                             tmax=args.tmax, baseline=baseline, noise_cov=noise_cov,
                             drop_bad=args.drop_bad, return_forward=True, picks=args.picks,
                             loose=args.loose, whiten=args.whiten or "auto")
    units = output_units(args.model)
    report = stc.solver_report
    peaks, written = write_outputs(stc, forward, prefix, formats=args.formats,
                                   title=f"{Path(recording).name},", units=units)
    if report.empty:
        echo(f"{recording}: {report.describe_empty()}; no peak table and no map")
    else:
        echo(format_report(peaks, units=units,
                           header=f"{recording}: {report.solver}, peak sources ("
                           + ("MNI-like fsaverage coordinates in mm; approximate lobes)"
                              if on_fsaverage_surface(forward) else
                              "mm in the source space's own frame)")))
    for path in written:
        echo(f"wrote {path}")
    seconds = time.perf_counter() - start
    echo(f"done in {seconds:.1f} s")
    top = peaks[0] if peaks else {}
    return {"recording": str(recording), "status": "ok", "solver": report.solver,
            "empty": report.empty, "hemisphere": top.get("hemisphere", ""),
            "region": top.get("region", ""), "x_mm": top.get("x_mm", ""),
            "y_mm": top.get("y_mm", ""), "z_mm": top.get("z_mm", ""),
            "time_s": top.get("time_s", ""), "prefix": str(prefix),
            "seconds": round(seconds, 2), "error": ""}


def _localize_or_report(recording, args, prefix):
    """One recording of a group: its row, or a row with the reason it failed (the rest of
    the group goes on)."""
    import warnings

    start = time.perf_counter()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return _localize_one(recording, args, prefix, lambda *_: None)
    except Exception as err:  # reported in the summary: one bad file must not stop all
        return {"recording": str(getattr(recording, "fpath", recording)), "status": "failed",
                "prefix": str(prefix),
                "seconds": round(time.perf_counter() - start, 2),
                "error": f"{type(err).__name__}: {err}"}


GROUP_FIELDS = ("recording", "status", "solver", "empty", "hemisphere", "region", "x_mm",
                "y_mm", "z_mm", "time_s", "seconds", "prefix", "error")


def _localize_group(recordings, args):
    """Several recordings, in parallel (``--n-jobs``; ``--scheduler`` spreads them over a
    dask cluster), each written as ``localize`` writes one, plus ``group-summary.csv``."""
    import csv

    from joblib import Parallel, delayed, parallel_config

    out = Path(args.out or ".")
    out.mkdir(parents=True, exist_ok=True)
    files = [Path(getattr(r, "fpath", r)) for r in recordings]
    names = [f.name.split(".")[0] for f in files]
    prefixes = [out / (f"{n}-{args.model}" if names.count(n) == 1 else
                       f"{f.parent.name}-{n}-{args.model}") for f, n in zip(files, names)]
    start = time.perf_counter()
    with contextlib.ExitStack() as stack:
        backend = {}
        if args.scheduler:  # joblib's dask backend runs on the client made current here
            from distributed import Client

            stack.enter_context(Client(args.scheduler))
            backend = {"backend": "dask"}
        with parallel_config(**backend):
            rows = Parallel(n_jobs=args.n_jobs)(delayed(_localize_or_report)(r, args, p)
                                                for r, p in zip(recordings, prefixes))
    summary = out / "group-summary.csv"
    with open(summary, "w", newline="") as fid:
        writer = csv.DictWriter(fid, fieldnames=GROUP_FIELDS)
        writer.writeheader()
        writer.writerows({k: row.get(k, "") for k in GROUP_FIELDS} for row in rows)
    failed = [row for row in rows if row["status"] != "ok"]
    for row in rows:
        where = (f"{row['hemisphere']} {row['region']}" if row["status"] == "ok" and
                 not row["empty"] else "no source above the noise" if row["status"] == "ok"
                 else row["error"])
        print(f"{row['status']:6s} {row['recording']}: {where}")
    print(f"{len(rows) - len(failed)} of {len(rows)} recordings localised in "
          f"{time.perf_counter() - start:.1f} s ({args.n_jobs} job(s)); wrote {summary}")
    return 0 if len(failed) < len(rows) else 1


@contextlib.contextmanager
def _info_to_stdout():
    """The package's INFO messages printed on stdout while the block runs."""
    log = logging.getLogger("unfolded_sbl")
    handler = logging.StreamHandler(sys.stdout)
    handler.setLevel(logging.INFO)
    handler.addFilter(lambda record: record.levelno == logging.INFO)  # warnings: stderr
    level = log.level
    log.addHandler(handler)
    log.setLevel(min(level, logging.INFO) if level else logging.INFO)
    try:
        yield
    finally:
        log.removeHandler(handler)
        log.setLevel(level)


def _interval(baseline):
    return "(" + ", ".join("start" if v is None and i == 0 else "0 s" if v is None else
                           f"{v:g} s" for i, v in enumerate(baseline)) + ")"


def _loose(value):
    """``--loose``: "auto" or a number in [0, 1]."""
    if value == "auto":
        return value
    try:
        number = float(value)
    except ValueError:
        number = -1.0
    if not 0 <= number <= 1:
        raise argparse.ArgumentTypeError(f"--loose must be 'auto' or a number in [0, 1], "
                                         f"got {value!r}")
    return number


def _existing(path):
    if not Path(path).exists():
        raise FileNotFoundError(f"no such file: {path}")
    return path


def _optional_float(value):
    return None if value.lower() == "none" else float(value)


def _cmd_stream(args):
    from .realtime import run

    run(args.name, model=args.model, window=args.window, hop=args.hop,
        duration=args.duration, out=args.out, replay_file=args.replay, outlet=args.outlet,
        montage=args.montage, forward=args.forward)
    return 0


def _cmd_export(args):
    from .export import export_onnx
    from .unfolded import UnfoldedSBLRegressor

    est = UnfoldedSBLRegressor.load(args.model, forward=args.forward)
    print(f"wrote {export_onnx(est, args.out, embed_forward=args.embed_forward)}")
    return 0


def _cmd_train(args):
    from .evaluation import format_table
    from .train_model import train_model

    card = train_model(args.forward, args.out, correction=args.correction,
                       n_samples=args.samples, noise=args.noise, n_layers=args.layers,
                       batch_size=args.batch_size, n_eval=args.n_eval, random_state=args.seed,
                       checkpoint=args.checkpoint)
    if card is None:  # another rank of a torchrun launch: rank 0 reports
        return 0
    print(format_table(card["validation"]["metrics"]))
    print(f"wrote {args.out} and {Path(args.out).with_suffix('.json')} (its model card)")
    return 0


DESCRIPTION = """EEG source imaging with sparse Bayesian learning (Champagne) and its
unfolded, learned variants. Nothing is downloaded: template head models and
pretrained models ship with the package."""
EPILOG = """examples:
  unfolded-sbl demo                          simulate, solve, print a metric table
  unfolded-sbl localize sub-01-ave.fif       localise an evoked file (ClassicalCB)
  unfolded-sbl localize rec.set --model deep-cb-known --noise-cov baseline
  unfolded-sbl forward list                  the shipped template forward models
  unfolded-sbl train --forward biosemi32 --samples 20000 --out my-model.pt

'unfolded-sbl COMMAND --help' describes each command's options."""


def build_parser():
    parser = argparse.ArgumentParser(
        prog="unfolded-sbl", description=DESCRIPTION, epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)

    demo = sub.add_parser("demo", help="simulate samples and solve them, print metrics")
    demo.add_argument("--forward", default="biosemi64-ico3",
                      help="template forward model to simulate and solve on (see "
                           "'unfolded-sbl forward list'; default: biosemi64-ico3)")
    demo.add_argument("--n-samples", type=int, default=16,
                      help="simulated samples to score (default: 16)")
    demo.add_argument("--seed", type=int, default=0, help="simulator seed (default: 0)")
    demo.set_defaults(func=_cmd_demo)

    demo.add_argument("--png", default=None, help="also draw truth and estimates of one "
                      "sample on the cortex into this PNG")

    loc = sub.add_parser("localize", help="source map and peak report of an EEG recording")
    loc.add_argument("recording", nargs="*",
                     help="evoked/epochs .fif, raw .fif, EEGLAB .set, BrainVision .vhdr, "
                          "EDF/BDF, ... (anything MNE reads); several, or a glob in quotes, "
                          "localise a group with a summary")
    loc.add_argument("--model", default="ClassicalCB",
                     help="ClassicalCB, sLORETA or a shipped model (unfolded-sbl models; "
                          "default: ClassicalCB, the best evidence on recorded EEG)")
    loc.add_argument("--forward", default=None, help="template name or -fwd.fif of your "
                     "head model (default: a template with the recording's channels)")
    loc.add_argument("--tmin", type=float, default=None, help="start of the window (s)")
    loc.add_argument("--tmax", type=float, default=None, help="end of the window (s)")
    loc.add_argument("--out", default=None, help="output prefix (default: "
                     "<recording>-<model> in the current folder); for several recordings "
                     "a folder (default: the current one)")
    loc.add_argument("--picks", default=None, metavar="TYPES",
                     help="channel types: eeg, meg or meg,eeg (default: EEG when present); "
                          "MEG needs --noise-cov, and --forward a -fwd.fif with the sensors "
                          "or none (built on fsaverage for the recording's sensors)")
    loc.add_argument("--whiten", action="store_true", help="EEG too: projected and "
                     "whitened by --noise-cov as MEG is (MNE's way; loose orientation on "
                     "a forward model built for the digitised electrodes)")
    loc.add_argument("--loose", type=_loose, default="auto", help="orientation constraint "
                     "of a free-orientation forward model: 0 fixed to 1 free (default: "
                     "auto, 0.2 on the cortex)")
    loc.add_argument("--n-jobs", type=int, default=1,
                     help="recordings localised in parallel (default: 1)")
    loc.add_argument("--scheduler", default=None, metavar="ADDRESS",
                     help="a dask scheduler (tcp://host:8786) to spread the recordings over")
    loc.add_argument("--bids-root", default=None, help="a BIDS dataset: localise its EEG "
                     "recordings (with --task, --subjects, --sessions)")
    loc.add_argument("--task", default=None, help="BIDS task")
    loc.add_argument("--subjects", nargs="+", default=None, help="BIDS subjects (default: all)")
    loc.add_argument("--sessions", nargs="+", default=None, help="BIDS sessions (default: all)")
    loc.add_argument("--formats", nargs="+", default=["stc", "png", "csv"],
                     choices=["stc", "png", "csv", "html"],
                     help="outputs: MNE source estimate, map at the peak time with the "
                          "peaks' time courses, peak table, interactive 3-D viewer "
                          "(self-contained HTML) (default: stc png csv)")
    loc.add_argument("--montage", default=None, help="standard montage to set, e.g. "
                     "standard_1020 (for files without channel positions)")
    loc.add_argument("--event", default=None, help="raw data: annotation to epoch and "
                     "average on (e.g. square)")
    loc.add_argument("--epoch", type=float, nargs=2, default=(-0.2, 0.5),
                     metavar=("TMIN", "TMAX"), help="epoch window around --event (s)")
    loc.add_argument("--condition", default=0, help="evoked files: index or name")
    loc.add_argument("--l-freq", type=float, default=None, help="high-pass (Hz) before "
                     "localising (raw, epochs and evoked data)")
    loc.add_argument("--h-freq", type=float, default=None, help="low-pass (Hz), e.g. 40")
    loc.add_argument("--baseline", type=_optional_float, nargs=2, default=(None, 0.0),
                     metavar=("TMIN", "TMAX"), help="baseline interval (s) whose mean is "
                     "removed from each channel when the data have pre-stimulus samples; "
                     "'none' for the start (default: none 0)")
    loc.add_argument("--no-baseline", action="store_true",
                     help="keep the data as they are (no baseline correction)")
    loc.add_argument("--drop-bad", choices=["auto", "none"], default="auto",
                     help="channels the data-quality checks flag (flat, noisy, DC offset "
                          "without baseline): drop them and say so (auto, default) or "
                          "keep them (none); the checks are always printed")
    loc.add_argument("--noise-cov", default=None, metavar="FILE|baseline",
                     help="sensor noise for known-noise models (deep-cb-known, "
                     "ClassicalCB): an MNE -cov.fif file, or 'baseline' to estimate it "
                     "from the pre-stimulus interval")

    loc.set_defaults(func=_cmd_localize)

    models = sub.add_parser("models", help="the solvers and shipped models: training prior, "
                            "typical gain and where each loses")
    models.set_defaults(func=_cmd_models)

    sim = sub.add_parser("simulate", help="write a simulated dataset (.npz)")
    sim.add_argument("out", help="output .npz file (sensors, sources, noise_var)")
    sim.add_argument("--forward", default="biosemi64-ico3",
                     help="template forward model (default: biosemi64-ico3)")
    sim.add_argument("--n-samples", type=int, default=1000,
                     help="samples to simulate (default: 1000)")
    sim.add_argument("--n-times", type=int, default=100,
                     help="time points per sample (default: 100)")
    sim.add_argument("--snr-db", type=float, nargs=2, default=(5.0, 20.0),
                     metavar=("LOW", "HIGH"),
                     help="per-sensor SNR range in dB (default: 5 20)")
    sim.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    sim.set_defaults(func=_cmd_simulate)

    stream = sub.add_parser("stream", help="source estimates of a live LSL EEG stream, "
                            "window by window")
    stream.add_argument("name", help="the LSL stream's name")
    stream.add_argument("--model", default="deep-cb-joint",
                        help="a shipped model (run by onnxruntime), ClassicalCB or sLORETA "
                             "(default: deep-cb-joint)")
    stream.add_argument("--window", type=float, default=0.2, help="window length (s)")
    stream.add_argument("--hop", type=float, default=0.1, help="step between windows (s)")
    stream.add_argument("--duration", type=float, default=None,
                        help="seconds of stream to solve (default: until Ctrl-C)")
    stream.add_argument("--out", default=None,
                        help="prefix of OUT-windows.csv (default: the stream's name)")
    stream.add_argument("--replay", default=None, metavar="FILE",
                        help="stream this recording with mne-lsl's PlayerLSL first")
    stream.add_argument("--outlet", action="store_true",
                        help="push each window's peak to an LSL stream NAME-sources")
    stream.add_argument("--montage", default=None, help="standard montage for channels "
                        "without standard names")
    stream.add_argument("--forward", default=None, help="template name or -fwd.fif")
    stream.set_defaults(func=_cmd_stream)

    exp = sub.add_parser("export", help="export a saved network (.pt) to ONNX")
    exp.add_argument("model", help="network saved by UnfoldedSBLRegressor.save (.pt)")
    exp.add_argument("out", help="ONNX file to write")
    exp.add_argument("--forward", default=None, help="template (default: training one)")
    exp.add_argument("--embed-forward", action="store_true",
                     help="make the forward model a constant of the file (input: sensors only)")
    exp.set_defaults(func=_cmd_export)

    train = sub.add_parser("train", help="train learned corrections for your forward model")
    train.add_argument("--forward", required=True,
                       help="a template name (unfolded-sbl forward list), an MNE standard "
                            "montage (e.g. easycap-M1: a forward model is built offline) or "
                            "your -fwd.fif")
    train.add_argument("--out", required=True, help="model file to write (.pt); its card "
                       "goes beside it (.json)")
    train.add_argument("--samples", type=int, default=20_000,
                       help="training budget in simulated samples (default: 20000)")
    train.add_argument("--correction", choices=["mlp", "attention", "graph", "bias"],
                       default="mlp", help="learned correction of each layer (default: mlp)")
    train.add_argument("--noise", choices=["learn", "known"], default="learn",
                       help="learn the sensor noise jointly (default) or take it as known")
    train.add_argument("--layers", type=int, default=25, help="layers (default: 25)")
    train.add_argument("--batch-size", type=int, default=32,
                       help="samples per step (default: 32)")
    train.add_argument("--n-eval", type=int, default=64,
                       help="held-out samples for the card's validation (default: 64)")
    train.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    train.add_argument("--checkpoint", default=None,
                       help="resumable checkpoint (default: OUT with .ckpt; rerun the "
                            "command to resume)")
    train.set_defaults(func=_cmd_train)

    fwd = sub.add_parser("forward", help="list, inspect or build template forward models")
    fwd_sub = fwd.add_subparsers(dest="action", required=True)
    fwd_sub.add_parser("list", help="shipped template forward models")
    info = fwd_sub.add_parser("info", help="one template's sizes and channels")
    info.add_argument("name", help="template name, e.g. biosemi64-ico3")
    build = fwd_sub.add_parser("build", help="rebuild templates offline (3-layer BEM)")
    build.add_argument("--out", default=None, help="output folder (default: package data)")
    build.add_argument("--caps", nargs="+", default=None,
                       help="caps to build (default: all shipped caps)")
    build.add_argument("--spacings", nargs="+", default=["ico3", "ico4"],
                       help="source spaces (default: ico3 ico4)")
    build.add_argument("--bem-ico", type=int, default=4,
                       help="BEM surface resolution (default: 4)")
    fwd.set_defaults(func=_cmd_forward)
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, TypeError, FileNotFoundError) as err:
        print(f"unfolded-sbl: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
