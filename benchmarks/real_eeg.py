"""Zero-shot checks on recorded EEG: where do the peak sources of known components fall?

    python -m benchmarks.real_eeg [--data ../shared/data/real_eeg]

No ground truth exists; the check is neurophysiological plausibility (the
expectations of ``real_eeg/README.md``):

* ERP CORE visual oddball (5 subjects, trial-averaged evokeds only): visual P1 of
  the non-target letters, 100-160 ms, expected occipital; P3 of the targets,
  300-400 ms, expected parietal.
* EEGLAB tutorial recording, epochs on ``square``, 1-30 Hz: visual N1, 150-250
  ms, expected posterior (occipital/parietal); trial-averaged and single-trial.

Every method runs on the shipped template that holds the recording's channels
(biosemi64-ico3 rows), the learned models exactly as shipped (no fine-tuning).
"""

from __future__ import annotations

import argparse
import time
from collections import Counter
from pathlib import Path

import mne

import unfolded_sbl as us
from benchmarks._results import HERE, write_section
from unfolded_sbl.localize import peak_report, peak_time_index, read_recording
from unfolded_sbl.viz import plot_source_maps

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "real_eeg"
METHODS = ("sLORETA", "ClassicalCB", "deep-cb-joint", "deep-cb-joint-classical-noise",
           "deep-graph-cb-joint", "deep-attn-cb-joint")
#: "posterior": behind y = -40 mm (MNI-like), the occipital and posterior parietal cortex
POSTERIOR_Y = -40.0


def top_peak(stc, fwd):
    peaks = peak_report(stc, fwd, n_peaks=1)
    return peaks[0] if peaks else None


def erp_core(data_dir):
    """Per method and component: the top peak of every subject's evoked."""
    files = sorted((data_dir / "erp_core_p3").glob("*_ave.fif"))
    components = {"P1 (non-target, 100-160 ms)": ("non", 0.10, 0.16, "occipital"),
                  "P3 (target, 300-400 ms)": ("target", 0.30, 0.40, "parietal")}
    rows, maps, fwd = {}, {}, None
    grand = {}
    for comp, (kind, tmin, tmax, _) in components.items():
        # each file holds [target, non-target, target minus non-target]
        index = 1 if kind == "non" else 0
        evokeds = [mne.read_evokeds(fname, verbose=False)[index] for fname in files]
        grand[comp] = mne.grand_average(evokeds)
        for method in METHODS:
            peaks = []
            for ev in evokeds:
                stc, fwd = us.apply(ev, method, tmin=tmin, tmax=tmax, return_forward=True)
                peaks.append(top_peak(stc, fwd))
            stc = us.apply(grand[comp], method, tmin=tmin, tmax=tmax)
            maps[(comp, method)] = stc.data[:, peak_time_index(stc)]
            rows[(comp, method)] = {"subjects": peaks, "grand": top_peak(stc, fwd)}
    return components, rows, maps, fwd, len(files)


def eeglab(data_dir):
    fname = data_dir / "eeglab_tutorial" / "eeglab_data.set"
    evoked = read_recording(fname, event="square", l_freq=1.0, h_freq=30.0)
    epochs = read_recording(fname, event="square", l_freq=1.0, h_freq=30.0, average=False)
    epochs.pick("eeg")
    rows, maps, fwd = {}, {}, None
    for method in METHODS:
        stc, fwd = us.apply(evoked, method, tmin=0.15, tmax=0.25, return_forward=True)
        maps[method] = stc.data[:, peak_time_index(stc)]
        start = time.perf_counter()
        stcs = us.apply(epochs, method, tmin=0.15, tmax=0.25)
        seconds = time.perf_counter() - start
        rows[method] = {"average": top_peak(stc, fwd),
                        "trials": [top_peak(s, fwd) for s in stcs],
                        "ms_per_trial": 1e3 * seconds / len(stcs)}
    return rows, maps, fwd, len(epochs)


def _where(peak):
    if peak is None:
        return "-"
    return (f"{peak['hemisphere'][0].upper()} {peak['region']} "
            f"({peak['x_mm']:.0f}, {peak['y_mm']:.0f}, {peak['z_mm']:.0f}) "
            f"{1e3 * peak['time_s']:.0f} ms")


def _posterior(peak):
    """A peak behind :data:`POSTERIOR_Y`; a trial without a peak (None) is not."""
    return peak is not None and peak["y_mm"] < POSTERIOR_Y


def _posterior_fraction(peaks):
    peaks = [p for p in peaks if p is not None]
    return sum(map(_posterior, peaks)) / max(len(peaks), 1)


def _posterior_against(peaks, reference):
    """Trials posterior with ``peaks`` only, with ``reference`` only, and McNemar's exact
    p-value of the difference (trials without a peak count as not posterior)."""
    from scipy.stats import binomtest

    only_here = sum(_posterior(p) and not _posterior(r) for p, r in zip(peaks, reference))
    only_reference = sum(_posterior(r) and not _posterior(p) for p, r in zip(peaks, reference))
    n = only_here + only_reference
    return only_here, only_reference, binomtest(only_here, n).pvalue if n else 1.0


VIEWS = (("left", "lateral"), ("right", "lateral"), ("left", "posterior"),
         ("right", "posterior"), ("left", "medial"), ("right", "medial"))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--out", type=Path, default=HERE)
    args = parser.parse_args(argv)
    if not args.data.exists():
        raise SystemExit(f"recorded EEG not found at {args.data}")
    fig_dir = args.out / "figures"
    fig_dir.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()

    components, erp_rows, erp_maps, fwd, n_subjects = erp_core(args.data)
    lines = ["| component | method | subjects with the top peak where expected | "
             "grand average: top peak (hemisphere, region, MNI-like mm, time) |",
             "|---|---|---|---|"]
    for comp, (_, _, _, expected) in components.items():
        for method in METHODS:
            r = erp_rows[(comp, method)]
            hits = sum(p is not None and p["region"] == expected for p in r["subjects"])
            regions = Counter(p["region"] for p in r["subjects"] if p is not None)
            lines.append(f"| {comp} | {method} | {hits}/{n_subjects} {expected} "
                         f"({', '.join(f'{k} {v}' for k, v in regions.most_common())}) | "
                         f"{_where(r['grand'])} |")
        plot_source_maps([erp_maps[(comp, m)] for m in METHODS], fwd, views=VIEWS,
                         titles=list(METHODS),
                         fname=fig_dir / f"real_erp_core_{comp.split()[0].lower()}.png")
    erp_table = "\n".join(lines)

    eeg_rows, eeg_maps, eeg_fwd, n_trials = eeglab(args.data)
    lines = ["| method | average: top peak | single trials with the top peak behind "
             "y = -40 mm | against ClassicalCB: trials posterior only here / only with it "
             "(McNemar exact p) | single trials: regions | ms per trial |",
             "|---|---|---|---|---|---|"]
    for method, r in eeg_rows.items():
        regions = Counter(p["region"] for p in r["trials"] if p is not None)
        here, there, p_value = _posterior_against(r["trials"],
                                                  eeg_rows["ClassicalCB"]["trials"])
        paired = "-" if method == "ClassicalCB" else f"{here} / {there} (p = {p_value:.2f})"
        lines.append(f"| {method} | {_where(r['average'])} | "
                     f"{100 * _posterior_fraction(r['trials']):.0f} % | {paired} | "
                     f"{', '.join(f'{k} {v}' for k, v in regions.most_common(3))} | "
                     f"{r['ms_per_trial']:.1f} |")
    plot_source_maps([eeg_maps[m] for m in METHODS], eeg_fwd, views=VIEWS,
                     titles=list(METHODS), fname=fig_dir / "real_eeglab_n1.png")
    eeg_table = "\n".join(lines)
    seconds = time.perf_counter() - start

    body = f"""`python -m benchmarks.real_eeg` ({seconds:.0f} s) - zero-shot on recorded EEG from
`../shared/data/real_eeg` (not in the repository). No ground truth: the check is whether
the strongest source of a well-known component falls where the literature puts it. Regions
are approximate lobes from MNI-like fsaverage coordinates (no atlas offline; see
`unfolded_sbl.localize.approximate_lobe`). Learned models run exactly as shipped (ONNX).

### ERP CORE visual oddball ({n_subjects} subjects, trial-averaged)

The files hold evokeds only; single trials are checked on the EEGLAB recording below.

{erp_table}

![ERP CORE P1](figures/real_erp_core_p1.png)

Grand-average visual P1 at its peak time (rows: methods).

![ERP CORE P3](figures/real_erp_core_p3.png)

Grand-average P3 at its peak time.

### EEGLAB tutorial: visual N1 to `square`, 1-30 Hz, 150-250 ms ({n_trials} trials)

{eeg_table}

![EEGLAB N1](figures/real_eeglab_n1.png)

Trial-averaged N1 at its peak time (rows: methods).
"""
    payload = {"erp_core": {f"{c} | {m}": r for (c, m), r in erp_rows.items()},
               "eeglab": eeg_rows}
    write_section("real_eeg", "Zero-shot checks on recorded EEG", body, payload,
                  root=args.out)
    print(erp_table)
    print(eeg_table)
    return payload


if __name__ == "__main__":
    main()
