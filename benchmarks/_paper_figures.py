"""Figures of ``benchmarks.paper`` (the paper's figures 2, 4, 5, 7 and 8), headless PNGs.

All figures use the training cap (biosemi64-ico3); data come from its perturbed
variant, methods invert with the nominal model.
"""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

import unfolded_sbl as us  # noqa: E402
from unfolded_sbl import metrics  # noqa: E402
from unfolded_sbl.evaluation import score_sources  # noqa: E402
from unfolded_sbl.zoo import TRAIN_FORWARD  # noqa: E402

DATA_FORWARD = f"{TRAIN_FORWARD}-perturbed"
SWEEPS = {
    # key: (simulator parameter, levels, parameter value of a level, axis label, training range)
    "snr": ("snr_db", (-5, 0, 5, 10, 15, 20, 30), lambda v: (v, v), "SNR (dB)", (5, 20)),
    "sources": ("n_patches", (1, 2, 5, 10, 20, 30), lambda v: (v, v), "active patches",
                (5, 20)),
    "extent": ("spread", (1, 2, 3, 4, 6, 8, 12), lambda v: (v / 1e3, v / 1e3),
               "patch spread (mm)", (2, 4)),
}
COLOURS = {"sLORETA": "tab:gray", "ClassicalCB joint": "k", "DeepSIF-like": "tab:purple",
           "Deep CB joint": "tab:blue", "Deep Attn CB joint": "tab:orange"}


def fig_layers(fname, fwd, data, estimators):
    """Metrics after every layer / iteration (paper figure 4)."""
    classical = us.UnfoldedSBLRegressor(fwd, correction="none", n_layers=100,
                                        max_epochs=0).fit_simulated()
    runs = {"ClassicalCB joint": classical, "Deep CB joint": estimators["Deep CB joint"],
            "Deep Attn CB joint": estimators["Deep Attn CB joint"]}
    curves = {}
    for name, est in runs.items():
        layers = est.predict_trajectory(data.sensors)
        curves[name] = {"rmse": [metrics.rmse(data.sources, s["sources"]) for s in layers],
                        "f1": [metrics.f1(data.sources, s["sources"]) for s in layers]}
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.4))
    for ax, key, label in zip(axes, ("rmse", "f1"), ("rMSE", "F1")):
        for name, curve in curves.items():
            ax.plot(np.arange(1, len(curve[key]) + 1), curve[key], label=name,
                    color=COLOURS[name])
        ax.axvline(25, color="0.7", ls=":", lw=1)
        ax.set_xscale("log")
        ax.set_xlabel("layer / iteration")
        ax.set_ylabel(label)
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(fname, dpi=110)
    plt.close(fig)
    c, d = curves["ClassicalCB joint"]["rmse"], curves["Deep CB joint"]["rmse"][-1]
    reach = next((k + 1 for k, v in enumerate(c) if v <= d), None)
    return {"curves": curves, "classical_iterations_to_match_deep_cb": reach}


def fig_sweeps(fig_dir, estimators, n_per_level, seed=500):
    """Robustness to SNR and number of sources (figure 5) and to source extent (figure 7)."""
    fwd = us.load_forward(TRAIN_FORWARD)
    results = {}
    for key, (param, levels, value, _, _) in SWEEPS.items():
        results[key] = {name: [] for name in estimators}
        for i, level in enumerate(levels):
            data = us.simulate(DATA_FORWARD, n_per_level, random_state=seed + 100 * i,
                               **{param: value(level)})
            for name, est in estimators.items():
                results[key][name].append(score_sources(data.sources, est.predict(data.sensors),
                                                        fwd))
    for fname, keys in (("paper_snr_sources.png", ("snr", "sources")),
                        ("paper_extent.png", ("extent",))):
        fig, axes = plt.subplots(len(keys), 3, figsize=(11, 3.2 * len(keys)), squeeze=False)
        for row, key in enumerate(keys):
            _, levels, _, label, train_range = SWEEPS[key]
            for ax, metric, title in zip(axes[row], ("rmse", "emd", "f1"),
                                         ("rMSE (log)", "EMD (mm)", "F1")):
                for name, rows in results[key].items():
                    y = np.array([r[metric] for r in rows]) * (1e3 if metric == "emd" else 1)
                    ax.plot(levels, y, "o-", ms=3, label=name, color=COLOURS[name])
                ax.axvspan(*train_range, color="0.9", zorder=0)
                ax.set_xlabel(label)
                ax.set_title(title, fontsize=9)
                if metric == "rmse":
                    ax.set_yscale("log")
        axes[0, 2].legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(fig_dir / fname, dpi=110)
        plt.close(fig)
    return results


def fig_corrections(fname, fwd, data, estimators):
    """Learned corrections added to the log-variance updates, per layer (figure 8)."""
    names = ("Deep CB joint", "Deep Attn CB joint")
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.4), sharex=True)
    summary = {}
    for name in names:
        layers = estimators[name].predict_trajectory(data.sensors)
        for ax, key in zip(axes, ("source_correction", "noise_correction")):
            values = [s[key] for s in layers if s[key] is not None]
            if not values:
                continue
            q = np.array([np.percentile(v, (10, 50, 90)) for v in values])
            k = np.arange(1, len(values) + 1)
            ax.plot(k, q[:, 1], color=COLOURS[name], label=name)
            ax.fill_between(k, q[:, 0], q[:, 2], color=COLOURS[name], alpha=0.2)
            summary[f"{name} {key}"] = q.tolist()
    axes[0].set_title("source branch c_k (log gamma)", fontsize=9)
    axes[1].set_title("noise branch d_k (log lambda)", fontsize=9)
    for ax in axes:
        ax.axhline(0, color="0.6", lw=0.8)
        ax.set_xlabel("layer")
    axes[0].set_ylabel("correction: median, 10-90 % band")
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(fname, dpi=110)
    plt.close(fig)
    return summary


def fig_cortex(fname, fwd, data, estimators, index=0):
    """Truth and estimates of one held-out sample on the cortex (figure 2)."""
    from unfolded_sbl.viz import plot_source_maps

    X = data.sensors[index:index + 1]
    maps = [metrics.rms_map(data.sources[index])]
    titles = ["truth"]
    for name, est in estimators.items():
        maps.append(metrics.rms_map(est.predict(X)[0]))
        titles.append(name)
    views = (("left", "lateral"), ("right", "lateral"), ("left", "medial"), ("right", "medial"))
    plot_source_maps(maps, fwd, views=views, titles=titles, fname=fname)
    return {"n_patches": int(data.n_active[index])}


def make_all(fig_dir, factories, n_curve, verbose=True):
    """Draw every figure; returns ``[(file name, title, caption)]`` for the report.

    ``factories`` maps a method name to ``forward -> fitted estimator``.
    """
    fwd = us.load_forward(TRAIN_FORWARD)
    estimators = {name: make(fwd) for name, make in factories.items()}
    data = us.simulate(DATA_FORWARD, n_curve, random_state=400)
    notes = []
    layers = fig_layers(fig_dir / "paper_layers.png", fwd, data, estimators)
    reach = layers["classical_iterations_to_match_deep_cb"]
    notes.append(("paper_layers.png", "Metrics per layer",
                  f"Figure 4: rMSE and F1 after each layer ({n_curve} held-out samples). "
                  "ClassicalCB is the untrained network run for 100 iterations; the learned "
                  "networks stop at 25 (dotted line). ClassicalCB needs "
                  + (f"{reach} iterations" if reach else "more than 100 iterations")
                  + " to reach the rMSE of Deep CB's 25 layers."))
    if verbose:
        print("figure: layers")
    fig_sweeps(fig_dir, estimators, n_curve)
    notes.append(("paper_snr_sources.png", "Robustness to SNR and number of sources",
                  f"Figure 5: metrics against per-sensor SNR and number of active patches "
                  f"({n_curve} samples per level); the grey band is the training range, "
                  "levels outside it are out of distribution."))
    notes.append(("paper_extent.png", "Source extent",
                  "Figure 7: metrics against the Gaussian patch spread (training: 2-4 mm)."))
    if verbose:
        print("figure: sweeps")
    fig_corrections(fig_dir / "paper_corrections.png", fwd, data, estimators)
    notes.append(("paper_corrections.png", "Corrections across layers",
                  "Figure 8: the learned terms added to the classical log-variance updates "
                  "(median and 10-90 % band over samples and sources/sensors). The last "
                  "layer has none by construction."))
    cortex = fig_cortex(fig_dir / "paper_cortex.png", fwd, data, estimators)
    notes.append(("paper_cortex.png", "Cortical maps",
                  f"Figure 2: temporal RMS of truth and estimates for one held-out sample "
                  f"({cortex['n_patches']} patches), each scaled to its maximum and "
                  "thresholded at 10 %."))
    if verbose:
        print("figure: cortex")
    return notes
