"""Maintainers' recipes for the shipped models: training presets, stages,
calibration, model cards and export.

``python -m unfolded_sbl.zoo NAME`` retrains a shipped model (see ``--help``); what
users import to list and load the shipped models is :mod:`unfolded_sbl.pretrained`.
"""

from __future__ import annotations

import json
import logging
import platform
from pathlib import Path

import numpy as np

from .pretrained import (  # noqa: F401
    DEFAULT_FORWARDS,
    DENSITY_CEILINGS,
    DESCRIPTIONS,
    MODEL_DIR,
    TRAIN_FORWARD,
    default_forward,
    list_pretrained,
    load_pretrained,
    model_card,
    pretrained_path,
    sha256,
    suits,
)
from .train_model import file_record

logger = logging.getLogger("unfolded_sbl")

#: name -> estimator parameters and training budget (2 CPU cores).
PRESETS = {
    "deep-cb-joint": dict(correction="mlp", noise_correction="mlp", learn_noise=True,
                          max_epochs=16, steps_per_epoch=20, progressive_steps=4,
                          batch_size=32, learning_rate=2e-3),
    "deep-cb-known": dict(correction="mlp", noise_correction="none", learn_noise=False,
                          max_epochs=10, steps_per_epoch=20, progressive_steps=3,
                          batch_size=32, learning_rate=2e-3),
    # attention over the 64 sources of largest classical update (O(M k)), so that it trains
    # at Deep CB's budget on a CPU (global attention costs O(M^2) per layer)
    "deep-attn-cb-joint": dict(correction="attention", attention_keys=64,
                               noise_correction="mlp", learn_noise=True, max_epochs=16,
                               steps_per_epoch=20, progressive_steps=4, batch_size=32,
                               learning_rate=2e-3),
    "deep-graph-cb-joint": dict(correction="graph", noise_correction="mlp", learn_noise=True,
                                max_epochs=16, steps_per_epoch=20, progressive_steps=4,
                                batch_size=32, learning_rate=2e-3),
}
#: Precision of the shipped ONNX graphs: their O(N^2 M) products run in float32 and
#: the N x N factorisation in float64 inside the graph (``network._precision``), as
#: ``load_pretrained(name, dtype="float32")`` does in torch: faster than float64 graphs
#: at the same rMSE (``python -m benchmarks.bench_onnx``, "float64 graphs"); the torch
#: default stays float64.
ONNX_DTYPE = "float32"
#: Presets that start from another shipped model instead of a stage 1 of their
#: own: the graph model starts as Deep CB (its pointwise weights, zero weights on
#: the neighbourhood inputs: the same function), so it inherits Deep CB's
#: training and its own stage adds the spatial context.
STARTS = {"deep-graph-cb-joint": "deep-cb-joint"}
#: Models made from another shipped model without training: name -> the model it is
#: made from.  ``deep-cb-joint-classical-noise`` is ``deep-cb-joint`` with its noise
#: corrections removed (:func:`without_noise_corrections`): without them Deep CB does not
#: lose to ClassicalCB on many patches (``python -m benchmarks.studies.noise_ablation``);
#: trained from scratch without them it does, so they are not the cause.
DERIVED = {"deep-cb-joint-classical-noise": "deep-cb-joint"}

#: Stage 2 of every shipped model: joint fine-tuning on the robust distribution
#: (``simulate.ROBUST_SIMULATOR``: 1-40 patches on the mesh, spreads 1-15 mm,
#: SNR -10..40 dB, coloured noise, noise-free samples, bad channels, T 10-300;
#: data projected through the head-model ensemble) with the classical-relative
#: loss, so that the corrections learn to absorb what recordings carry and to
#: fall back on the classical update where they cannot help.
ROBUST_STAGE = dict(loss="classical_relative", progressive_steps=0, learning_rate=3e-4,
                    deep_supervision=0.3, n_val=64, select_best=True)
#: name -> stage-2 budget (2 CPU cores, float64).
ROBUST_BUDGETS = {
    "deep-cb-joint": dict(max_epochs=50, steps_per_epoch=15, batch_size=32),
    "deep-cb-known": dict(max_epochs=20, steps_per_epoch=15, batch_size=32),
    "deep-attn-cb-joint": dict(max_epochs=50, steps_per_epoch=15, batch_size=32),
    # on top of Deep CB's two stages; a larger rate for the new neighbourhood inputs
    "deep-graph-cb-joint": dict(max_epochs=36, steps_per_epoch=15, batch_size=32,
                                learning_rate=1e-3),
}


#: Third stage-2 component of :func:`robust_simulator_params` with ``low_snr``:
#: the paper's simulator at per-sensor SNR -10..10 dB, where the robustness
#: matrix found the attention model losing to ClassicalCB.
LOW_SNR = {"snr_db": (-10.0, 10.0)}
#: Stage-2 component added by :func:`robust_simulator_params` with ``dense``: the
#: paper's simulator with 20-40 patches, where the robustness matrix found Deep CB
#: level with or just behind ClassicalCB (the robust simulator draws the patch
#: count log-uniformly from 1-40, so it seldom shows 20 or more small patches).
DENSE = {"n_patches": (20, 40)}
#: Stage-2 component added with ``wide``: the paper's simulator with patches of
#: 6-15 mm spread along the mesh, where the robustness matrix found the graph model
#: level with or behind ClassicalCB (the robust simulator draws spreads
#: log-uniformly from 1-15 mm, so wide patches are its rarest).
WIDE = {"spread": (0.006, 0.015), "patch_distance": "mesh"}


#: Models for source spaces denser than the training one: name -> (the shipped model it
#: starts from, density factor s).  They are trained at ico3, like every shipped model, on
#: patches s times wider than the paper's, along the mesh: the ico3 picture of the
#: paper's patches on a source space with s times finer spacing (at ico4, about 1.9x
#: finer, the paper's 2-4 mm patches cover several sources, as 4-8 mm patches do at ico3,
#: and ClassicalCB's own error grows with its iterations in both).  Their
#: ``train_spacing_`` is the training source space's divided by s, so the regime check
#: lets their corrections act on such source spaces and solves coarser ones classically.
DENSER = {"deep-graph-cb-joint-ico4": ("deep-graph-cb-joint", 2.0)}
#: A :data:`DENSER` model's corrections act on source spaces down to its
#: ``train_spacing_`` divided by this (its ``spacing_range_``; coarser ones within
#: ``regime.SPACING_TOLERANCE`` as for every model).  They slow the classical
#: sparsification, which costs ClassicalCB more the denser the source space
#: (``python -m benchmarks.density``).
DENSER_REACH = 2.0
#: Their first stage (on top of the starting model's stages): the wider paper patches and
#: the robust simulator, through the head-model ensemble; the kept epoch is the one whose
#: worse part (ratio to ClassicalCB) is best.
DENSER_STAGE = dict(loss="classical_relative", progressive_steps=0, learning_rate=5e-4,
                    deep_supervision=0.3, n_val=256, select_best=True, mixture_focus=10.0,
                    max_epochs=24, steps_per_epoch=15, batch_size=32)
#: Their second stage: the wider paper patches alone, at twice the first stage's rate,
#: because the first stage's mixture left that part behind the robust one (the card
#: records both stages' validation).
DENSER_WIDE_STAGE = {**DENSER_STAGE, "learning_rate": 1e-3, "mixture_focus": 0.0,
                     "max_epochs": 12}
#: The source space their card validates on (perturbed template of the same cap).
DENSER_FORWARD = DEFAULT_FORWARDS["deep-graph-cb-joint-ico4"]
#: Their last step: the output weights of the last source correction scaled by the factor
#: of this grid whose worst validation part (ratio to ClassicalCB at the same depth, on
#: the training source space's perturbed template, the stages' own picture: the wider
#: paper patches and the robust simulator) is lowest, the same rule that kept their
#: epochs: the ico4 model's last correction raised its error layer by layer while still
#: gaining on the robust simulator, hence a scale rather than dropping it.  A step of
#: these models only: on the ico3 models' own parts the rule would trade wide patches
#: away (the commit that introduced it records the figures).
LAST_CORRECTION_SCALES = (0.0, 0.25, 0.5, 0.75, 1.0)
#: Samples per validation part of that choice, and their seed.
CALIBRATION_SAMPLES = 512
CALIBRATION_SEED = 20_000
CALIBRATION_CHUNK = 128
CALIBRATION_STAGE = "last correction calibrated"


def denser_spacing_range(train_spacing):
    """``spacing_range_`` of a :data:`DENSER` model trained for ``train_spacing``."""
    from .regime import SPACING_TOLERANCE

    return [train_spacing / DENSER_REACH, train_spacing * SPACING_TOLERANCE]


def denser_simulator_params(factor):
    """Stage data of a :data:`DENSER` model: the paper's simulator with patches
    ``factor`` times wider (along the mesh) and the robust simulator, both through the
    head-model ensemble."""
    import inspect

    from .simulate import ROBUST_SIMULATOR, Simulator

    paper_spread = inspect.signature(Simulator).parameters["spread"].default
    spread = tuple(factor * s for s in paper_spread)
    return [{"spread": spread, "patch_distance": "mesh", "head_models": "ensemble"},
            {**ROBUST_SIMULATOR, "head_models": "ensemble"}]


def robust_simulator_params(low_snr=False, dense=False, wide=False):
    """Stage-2 training data: an even mixture of the paper's simulator and the robust
    one, both projected through the head-model ensemble (alone, the robust one made
    the corrections trade focal samples for extended ones: rMSE on paper-like
    samples went from 0.61 to 0.89, ClassicalCB 0.67).  ``low_snr`` adds the
    paper's simulator at ``LOW_SNR`` as a third component: a third of the batches,
    and a validation part of its own, so that the kept epoch (the best worst
    part) does not lose there either; ``dense`` adds the paper's simulator with
    ``DENSE`` patches the same way, and ``wide`` the paper's simulator with
    ``WIDE`` patches.  Every part goes through the head-model ensemble, and the
    batches are shared evenly between the parts."""
    return [{**params, "head_models": "ensemble"}
            for _, params in _stage2_components(low_snr, dense, wide)]


def _stage2_components(low_snr, dense, wide=False):
    """(label for the model card, simulator parameters) of each stage-2 part."""
    from .simulate import ROBUST_SIMULATOR

    parts = [("paper defaults", {}), (ROBUST_SIMULATOR, ROBUST_SIMULATOR)]
    if low_snr:
        low, high = LOW_SNR["snr_db"]
        parts.append((f"paper defaults at {low:g}..{high:g} dB", LOW_SNR))
    if dense:
        fewest, most = DENSE["n_patches"]
        parts.append((f"paper defaults with {fewest}-{most} patches", DENSE))
    if wide:
        narrow, broad = (1e3 * s for s in WIDE["spread"])
        parts.append((f"paper defaults with {narrow:g}-{broad:g} mm patches along the mesh",
                       WIDE))
    return parts


def _mixture_labels(low_snr, dense, wide=False):
    """The stage-2 mixture as the model card records it."""
    return [label for label, _ in _stage2_components(low_snr, dense, wide)]


def _evaluate(estimators, data, forward, known):
    from .evaluation import evaluate

    kwargs = {k: {"noise_var": data.noise_var} for k in known}
    return evaluate(estimators, data, forward, kwargs)


#: The training prior of each shipped model, in words, for its card's summary.
PRIORS = {
    "robust": "the paper's focal patches (5-20 patches of 2-4 mm, 5-20 dB), then fine-tuned "
              "on a mixture with the robust simulator (1-40 patches of 1-15 mm along the "
              "mesh, -10..40 dB, coloured noise, bad channels) through perturbed head models, "
              "with a loss relative to ClassicalCB: trained not to lose",
    "focal": "the paper's simulator only: 5-20 focal patches of 2-4 mm, 5-20 dB, white "
             "noise, T = 100, nominal template",
    "denser": "the robust models' prior with patches twice as wide, for source spaces about "
              "twice as dense as ico3 (ico4)",
}
#: name -> key of :data:`PRIORS`.
MODEL_PRIORS = {"deep-cb-joint": "robust", "deep-cb-known": "robust",
                "deep-attn-cb-joint": "robust", "deep-graph-cb-joint": "robust",
                "deep-cb-joint-classical-noise": "robust",
                "deep-graph-cb-joint-ico4": "denser", "deep-cb-joint-focal": "focal"}
#: A robustness-matrix cell above this ratio to ClassicalCB counts as a loss.
LOSS_RATIO = 1.005


def robustness_summary(name, results):
    """A model's summary for its card, from ``python -m benchmarks.robustness``'s
    ``results`` (the dict of ``benchmarks/results/robustness.json``): the median rMSE
    ratio to ClassicalCB-25 over the conditions where its corrections act, the
    nominal and perturbed rows, and every condition above :data:`LOSS_RATIO`."""
    rows = {label: row["cells"][name]["ratio"] for label, row in results["rows"].items()
            if name in row["cells"] and row["cells"][name]["ratio"] is not None}
    if not rows:
        raise ValueError(f"{name} is not in the robustness results")
    # a ratio of exactly 1: the regime check solved that row classically
    acting = {k: v for k, v in rows.items() if abs(v - 1.0) > 1e-9} or rows
    return {"prior": PRIORS[MODEL_PRIORS[name]],
            "median_ratio": round(float(np.median(list(acting.values()))), 3),
            "nominal": round(rows.get("nominal template", float("nan")), 3),
            "perturbed": round(rows.get("perturbed template", float("nan")), 3),
            "loses": {k: round(v, 3) for k, v in rows.items() if v > LOSS_RATIO},
            "n_samples": results["n_samples"], "source": "python -m benchmarks.robustness"}


def write_summaries(results_path, out_dir=MODEL_DIR):
    """Write :func:`robustness_summary` into every shipped card that the results hold
    (the model files, and so the cards' hashes of them, do not change)."""
    with open(results_path) as fid:
        results = json.load(fid)
    for name in list_pretrained():
        path = Path(out_dir) / f"{name}.json"
        card = json.loads(path.read_text())
        try:
            card["summary"] = robustness_summary(name, results)
        except ValueError:
            continue
        path.write_text(json.dumps(card, indent=2, default=float))


def _samples_seen(params, n_layers=25):
    return int(params["batch_size"] * (params["max_epochs"] * params["steps_per_epoch"]
                                       + params.get("progressive_steps", 0) * (n_layers - 1)))


def train_pretrained(name, out_dir=MODEL_DIR, random_state=0, n_eval=256, overrides=None,
                     checkpoint_dir=None, verbose=True, init=None, robust_overrides=None,
                     low_snr=False, continue_training=False, dense=False, wide=False):
    """Train a preset in two stages, evaluate it, export it and write its card.

    Stage 1 (``PRESETS``) trains from scratch on the paper's simulator; stage 2
    (``ROBUST_STAGE`` with ``ROBUST_BUDGETS``) fine-tunes on the robust
    distribution (with ``low_snr``, ``dense`` and ``wide``, plus a low-SNR, a
    many-patch and a wide-patch component: see :func:`robust_simulator_params`).
    ``init`` (a model file, e.g. the shipped ``.pt``) skips stage 1 and fine-tunes
    that model; its card's stage-1 record is kept when it is a shipped model, and
    with ``continue_training`` its stage-2 records too (the new stage is then recorded
    as one more stage), and the new stage selects its epoch relative to the starting model
    (``select_best="relative"``: the start is kept unless an epoch improves on
    it in every validation part).
    Both stages checkpoint into ``checkpoint_dir``.
    """
    from .simulate import Simulator
    from .unfolded import UnfoldedSBLRegressor

    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; available: {sorted(PRESETS)}")
    params = {**PRESETS[name], **(overrides or {})}
    # a continuation keeps its starting weights unless an epoch beats them on every part
    relative = {"select_best": "relative"} if continue_training else {}
    robust = {**ROBUST_STAGE, **ROBUST_BUDGETS[name], **relative, **(robust_overrides or {}),
              "simulator_params": robust_simulator_params(low_snr, dense, wide)}
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    checkpoints = {k: _checkpoint_path(checkpoint_dir, f"{name}-{k}") for k in ("paper", "robust")}
    stages = []
    if init is None and name in STARTS:
        init = MODEL_DIR / f"{STARTS[name]}.pt"
    if init is None:
        est = UnfoldedSBLRegressor(forward=TRAIN_FORWARD, random_state=random_state,
                                   checkpoint=checkpoints["paper"], verbose=verbose, **params)
        est.fit_simulated()
        sim = Simulator(TRAIN_FORWARD)
        stages.append({"name": "paper", "estimator_params": params,
                       "samples_seen": _samples_seen(params),
                       "seconds": round(est.train_seconds_, 1),
                       "machine": f"{platform.machine()}, CPU only",
                       "simulator": {"n_patches": sim.n_patches, "spread_m": sim.spread,
                                     "amplitude_Am": sim.amplitude, "snr_db": sim.snr_db,
                                     "n_times": sim.n_times, "sfreq": sim.sfreq,
                                     "bands": sim.bands},
                       "history": est.history_})
    else:
        est = _start_from(init, params)
        stages.extend(_previous_stages(name, init, continue_training))
    n_robust = sum(st["name"].startswith("robust") for st in stages)
    stages.append(_fine_tune(est, "robust" if not n_robust else f"robust-{n_robust + 1}",
                             robust, _mixture_labels(low_snr, dense, wide),
                             checkpoints["robust"], random_state, verbose))
    _save_model(est, name, out_dir)
    return write_card(name, out_dir, stages, params, random_state, n_eval)


def without_noise_corrections(est):
    """A copy of the fitted joint-noise ``est`` without its noise corrections: the noise
    update is the classical one in every layer, the source corrections are unchanged.

    ``python -m benchmarks.studies.noise_ablation`` measures what this does to the shipped
    models: without them Deep CB no longer loses to ClassicalCB on many patches,
    though a Deep CB trained without them does (the documentation's "Training
    distribution of the shipped models").
    """
    import copy

    if not est.learn_noise or est.noise_correction == "none":
        raise ValueError("the estimator has no noise corrections to remove")
    new = copy.deepcopy(est)
    state = {k: v for k, v in new.network_.state_dict().items()
             if not k.startswith("noise_corrections.")}
    kept = {"history_": new.history_, "train_spacing_": new.train_spacing_}
    new.set_params(noise_correction="none", warm_start=False)._build()
    new.network_.load_state_dict(state)
    new.network_.eval()
    for name, value in kept.items():
        setattr(new, name, value)
    return new


def derive(name, out_dir=MODEL_DIR, n_eval=256):
    """Make the :data:`DERIVED` model ``name`` from its shipped source model (no
    training), export it and write its card: the source's stages and one more, with
    no samples, that records the change."""
    from .unfolded import UnfoldedSBLRegressor

    if name not in DERIVED:
        raise ValueError(f"unknown derived model {name!r}; available: {sorted(DERIVED)}")
    source = DERIVED[name]
    card = model_card(source)
    est = without_noise_corrections(UnfoldedSBLRegressor.load(pretrained_path(source),
                                                              forward=TRAIN_FORWARD))
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    _save_model(est, name, out_dir)
    stages = [{**st, "name": f"{source}: {st['name']}"} for st in card["training"]["stages"]]
    stages.append({"name": "noise corrections removed", "samples_seen": 0, "seconds": 0.0,
                   "source": f"{source} (sha256 {card['files'][f'{source}.pt']['sha256']})",
                   "change": "zoo.without_noise_corrections: the classical noise update in "
                             "every layer, the source corrections unchanged"})
    params = {**card["estimator_params"], "noise_correction": "none"}
    return write_card(name, out_dir, stages, params, card.get("seed", 0), n_eval)


def _checkpoint_path(checkpoint_dir, stem):
    """``<checkpoint_dir>/<stem>.ckpt`` (the folder created), or None without a folder."""
    if not checkpoint_dir:
        return None
    Path(checkpoint_dir).mkdir(parents=True, exist_ok=True)
    return str(Path(checkpoint_dir) / f"{stem}.ckpt")


def _fine_tune(est, label, stage, mixture, checkpoint, random_state, verbose):
    """Run one fine-tuning stage of ``est`` (float64, from its current weights,
    checkpointed into ``checkpoint``) and return the stage's record for the
    model card, its ``history`` holding this stage's epochs only."""
    est.history_ = []
    est.set_params(warm_start=True, checkpoint=checkpoint, verbose=verbose,
                   random_state=random_state, dtype="float64", **stage)
    est.fit_simulated()
    est.set_params(warm_start=False, checkpoint=None)
    return {"name": label,
            "estimator_params": {k: v for k, v in stage.items() if k != "simulator_params"},
            "samples_seen": _samples_seen(stage),
            "seconds": round(est.train_seconds_, 1),
            "best_epoch": getattr(est, "best_epoch_", None),
            "start_validation": getattr(est, "start_validation_", None),
            "machine": f"{platform.machine()}, CPU only",
            "simulator": {"mixture": mixture, "head_models": _ensemble_record()},
            "history": est.history_}


def _denser_stages(factor):
    """(label, stage, mixture labels) of a :data:`DENSER` model's stages, in order."""
    wide, robust = denser_simulator_params(factor)
    label = (f"paper defaults with {factor:g}x wider patches along the mesh "
             f"({1e3 * wide['spread'][0]:g}-{1e3 * wide['spread'][1]:g} mm)")
    return [(f"denser x{factor:g}", {**DENSER_STAGE, "simulator_params": [wide, robust]},
             [label, "ROBUST_SIMULATOR"]),
            (f"denser x{factor:g}, wide patches", {**DENSER_WIDE_STAGE,
                                                   "simulator_params": [wide]}, [label])]


def scale_last_correction(est, scale):
    """Scale the output layer (weights and bias) of ``est``'s last source correction by
    ``scale`` in place: 0 makes that layer's update the classical one, 1 leaves it."""
    import torch

    modules = [m for m in est.network_.source_corrections
               if not isinstance(m, torch.nn.Identity)]
    if not modules or not hasattr(modules[-1], "out"):
        raise ValueError("scale_last_correction needs MLP or graph source corrections, "
                         f"not correction={est.correction!r}")
    with torch.no_grad():
        modules[-1].out.weight.mul_(scale)
        modules[-1].out.bias.mul_(scale)
    return est


def calibrate_last_correction(est, simulator_params, scales=LAST_CORRECTION_SCALES,
                              n_samples=CALIBRATION_SAMPLES, random_state=CALIBRATION_SEED):
    """Choose and apply the scale of ``est``'s last source correction (see
    :data:`LAST_CORRECTION_SCALES`): for each scale, the rMSE ratio to ClassicalCB at the
    network's depth on one fixed set per entry of ``simulator_params`` (drawn from the
    ``-perturbed`` template of ``est``'s forward model, the source-space check off); the
    scale whose worst part is lowest is kept, the larger one on a tie.  Returns the
    record of this step for the model card."""
    import copy
    import time

    from .estimators import ClassicalCB
    from .metrics import rmse
    from .resolve import perturbed_variant
    from .simulate import simulate

    begin = time.perf_counter()
    fwd = est.forward_
    val_forward = perturbed_variant(fwd)
    if val_forward is None:
        raise ValueError(f"calibration needs a template forward model with a perturbed "
                         f"variant, got {fwd!r}")
    classical = ClassicalCB(fwd, n_iter=est.n_layers).fit()
    start = copy.deepcopy(est.network_.state_dict())
    regime_check = est.regime_check
    est.set_params(regime_check=False)
    # summed rMSE per (part, scale), and ClassicalCB's per part, over chunks of samples
    errors = np.zeros((len(simulator_params), len(scales)))
    reference = np.zeros(len(simulator_params))
    for i, params in enumerate(simulator_params):
        params = {k: v for k, v in params.items() if k != "head_models"}
        for chunk, start_index in enumerate(range(0, n_samples, CALIBRATION_CHUNK)):
            data = simulate(val_forward, min(CALIBRATION_CHUNK, n_samples - start_index),
                            random_state=random_state + 1000 * i + chunk, **params)
            reference[i] += rmse(data.sources, classical.predict(data.sensors),
                                 average=False).sum()
            for j, scale in enumerate(scales):
                est.network_.load_state_dict(start)
                scale_last_correction(est, scale)
                errors[i, j] += rmse(data.sources, est.predict(data.sensors),
                                     average=False).sum()
    est.set_params(regime_check=regime_check)
    ratios = [[round(float(errors[i, j] / reference[i]), 4)
               for i in range(len(simulator_params))] for j in range(len(scales))]
    worst = [max(r) for r in ratios]
    # the lowest worst part; on a tie the larger scale (nearer the trained weights)
    best = min(range(len(scales)), key=lambda i: (worst[i], -scales[i]))
    est.network_.load_state_dict(start)
    scale_last_correction(est, scales[best])
    return {"name": CALIBRATION_STAGE, "samples_seen": 0,
            "seconds": round(time.perf_counter() - begin, 1),
            "rule": "lowest worst part (rMSE ratio to ClassicalCB at the same depth)",
            "forward": f"{fwd.name}-perturbed", "n_samples": n_samples,
            "seed": random_state, "scales": list(scales), "ratio_parts": ratios,
            "scale": scales[best]}


def train_denser(name, out_dir=MODEL_DIR, random_state=0, n_eval=256, checkpoint_dir=None,
                 verbose=True, continue_training=False):
    """Train a :data:`DENSER` model from its shipped starting model (the stages of
    :func:`_denser_stages`, stage ``i`` with seed ``random_state + i``, checkpointed into
    ``checkpoint_dir``), scale its last source correction
    (:func:`calibrate_last_correction`), set its ``train_spacing_``, export it and write
    its card (validated on :data:`DENSER_FORWARD`).

    With ``continue_training`` it starts from the shipped ``NAME.pt`` instead and runs
    only the stages its card does not list yet (the card keeps the earlier ones).
    """
    from .forward import load_forward, source_spacing

    start_name, factor = DENSER[name]
    params = PRESETS[start_name]
    if continue_training:
        est = _start_from(MODEL_DIR / f"{name}.pt", params)
        stages = model_card(name)["training"]["stages"]
    else:
        est = _start_from(MODEL_DIR / f"{start_name}.pt", params)
        stages = [{**st, "name": f"{start_name}: {st['name']}"}
                  for st in model_card(start_name)["training"]["stages"]]
    done = {st["name"] for st in stages}
    for i, (label, stage, mixture) in enumerate(_denser_stages(factor)):
        if label in done:
            continue
        checkpoint = _checkpoint_path(checkpoint_dir, f"{name}-{i}")
        stages.append(_fine_tune(est, label, stage, mixture, checkpoint, random_state + i,
                                 verbose))
    if CALIBRATION_STAGE not in done:
        est.network_.eval()
        stages.append(calibrate_last_correction(est, denser_simulator_params(factor)))
    # the card records them too (write_card), from the saved file
    est.train_spacing_ = source_spacing(load_forward(TRAIN_FORWARD)) / factor
    est.spacing_range_ = denser_spacing_range(est.train_spacing_)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    _save_model(est, name, out_dir)
    return write_card(name, out_dir, stages, params, random_state, n_eval)


def _file_records(paths):
    """The card's ``files`` entries: name -> sha256 and size."""
    return {Path(p).name: file_record(p) for p in paths}


def write_card(name, out_dir=MODEL_DIR, stages=None, params=None, random_state=0, n_eval=256):
    """Export ``NAME.pt`` (in ``out_dir``) to ONNX, validate both files against
    ClassicalCB and write the model card.

    ``stages`` and ``params`` default to those of the existing card, so that a
    model can be re-exported and re-validated after a change of the solver code
    without retraining.
    """
    from .estimators import ClassicalCB
    from .forward import load_forward
    from .simulate import ROBUST_SIMULATOR, simulate
    from .train_model import versions
    from .unfolded import UnfoldedSBLRegressor

    out_dir = Path(out_dir)
    if stages is None or params is None:
        with open(out_dir / f"{name}.json") as fid:
            previous = json.load(fid)
        stages = previous["training"]["stages"] if stages is None else stages
        params = previous["estimator_params"] if params is None else params
        random_state = previous.get("seed", random_state)
    files = {f"{name}.pt": out_dir / f"{name}.pt", f"{name}.onnx": out_dir / f"{name}.onnx"}
    est = _export(name, out_dir)
    # validated where its corrections act: the training source space, or the denser one
    val_name = default_forward(name)
    fwd = load_forward(val_name)
    if val_name != TRAIN_FORWARD:
        est = UnfoldedSBLRegressor.load(files[f"{name}.pt"], forward=fwd,
                                        density_ceiling=None)
    val_forward = load_forward(f"{val_name}-perturbed")
    noise = "learn" if params["learn_noise"] else "known"
    classical = {f"ClassicalCB ({noise}), 25 it.": ClassicalCB(fwd, noise=noise).fit(),
                 f"ClassicalCB ({noise}), 100 it.": ClassicalCB(fwd, noise=noise,
                                                                n_iter=100).fit()}
    known = [] if params["learn_noise"] else list(classical) + [name]
    validation = {}
    for label, sim_params in (("paper", {}), ("robust", ROBUST_SIMULATOR)):
        seed = 10_000 + random_state
        data = simulate(val_forward, n_eval, random_state=seed, **sim_params)
        validation[label] = {"forward": f"{val_name}-perturbed", "n_samples": n_eval,
                             "seed": seed, "simulator": label,
                             "metrics": _evaluate({**classical, name: est}, data, fwd, known)}
    card = {
        "name": name, "format_version": 2,
        "description": DESCRIPTIONS.get(name, name),
        "estimator_params": params, "seed": random_state, "dtype": est.dtype,
        "onnx_dtype": ONNX_DTYPE,
        "train_spacing_m": est.train_spacing_,
        "spacing_range_m": getattr(est, "spacing_range_", None),
        "training": {"forward": TRAIN_FORWARD, "data": "streamed from the simulator, fresh "
                     "samples every step", "stages": stages,
                     "samples_seen": sum(st["samples_seen"] for st in stages),
                     "seconds": round(sum(st["seconds"] for st in stages), 1)},
        # the paper-simulator figures stay where earlier readers found them
        "validation": validation["paper"],
        "validation_robust": validation["robust"],
        "robustness": "python -m benchmarks.robustness (benchmarks/RESULTS.md)",
        "versions": versions(),
        "files": _file_records(files.values()),
    }
    with open(out_dir / f"{name}.json", "w") as fid:
        json.dump(card, fid, indent=2, default=float)
    return card


def _save_model(est, name, out_dir):
    """Write ``NAME.pt`` with the model's :data:`DENSITY_CEILINGS` entry, which
    ``UnfoldedSBLRegressor.load`` reads back (its ``density_ceiling="auto"``)."""
    est.set_params(density_ceiling=DENSITY_CEILINGS.get(name))
    est.save(Path(out_dir) / f"{name}.pt")


def _export(name, out_dir):
    """Load ``NAME.pt`` on the training forward model and export it to ``NAME.onnx``
    beside it, in :data:`ONNX_DTYPE`; returns the estimator loaded in float64 (the
    torch default, which the card validates) without a density ceiling."""
    from .export import export_onnx
    from .unfolded import UnfoldedSBLRegressor

    path = Path(out_dir) / f"{name}.pt"
    # the file records the model's density ceiling (OnnxSBLRegressor's "auto")
    export_onnx(UnfoldedSBLRegressor.load(path, forward=TRAIN_FORWARD, dtype=ONNX_DTYPE,
                                          density_ceiling=DENSITY_CEILINGS.get(name)),
                Path(out_dir) / f"{name}.onnx", name=name,
                provenance={"weights": path.name, "weights_sha256": file_record(path)["sha256"]})
    # the card validates the network itself, without the density check (as the cards
    # written before the check existed did)
    return UnfoldedSBLRegressor.load(path, forward=TRAIN_FORWARD, density_ceiling=None)


def refresh_export(name, out_dir=MODEL_DIR):
    """Export ``NAME.pt`` to ONNX again (after a change of the graph, not of the
    weights) and update the file hashes of its card.  The card's validation was
    computed with the torch model from the same ``.pt``, so it stays valid; the
    test suite holds the new ONNX file to the torch model."""
    out_dir = Path(out_dir)
    est = _export(name, out_dir)
    with open(out_dir / f"{name}.json") as fid:
        card = json.load(fid)
    card["spacing_range_m"] = getattr(est, "spacing_range_", None)
    card["files"] = _file_records(out_dir / fname for fname in card["files"])
    card["onnx_dtype"] = ONNX_DTYPE
    with open(out_dir / f"{name}.json", "w") as fid:
        json.dump(card, fid, indent=2, default=float)
    return card


def _ensemble_record():
    import inspect

    from . import head_models as hm
    from .simulate import Simulator

    nominal_prob = inspect.signature(Simulator).parameters["nominal_prob"].default
    return {"members": hm.ENSEMBLE_MEMBERS, "seed": hm.ENSEMBLE_SEED,
            "bem_ico": hm.ENSEMBLE_BEM_ICO, "ranges": hm.ENSEMBLE_RANGES,
            "nominal_prob": nominal_prob}


def _start_from(init, params):
    """The model file ``init`` as a float64 estimator with the preset's correction
    (pointwise weights become graph weights of the same function) and correction
    width (``correction_units`` above the file's: added units that start with zero
    output weights, the same function again)."""
    from .network import pointwise_to_graph, widen_corrections
    from .unfolded import UnfoldedSBLRegressor

    est = UnfoldedSBLRegressor.load(init, forward=TRAIN_FORWARD, dtype="float64")
    noise_correction = params.get("noise_correction", est.noise_correction)
    if est.noise_correction != noise_correction:
        raise ValueError(f"cannot start a model with noise_correction={noise_correction!r} "
                         f"from {init}, whose noise_correction is {est.noise_correction!r}")
    correction = params["correction"]
    units = params.get("correction_units", est.correction_units)
    if (est.correction, est.correction_units) == (correction, units):
        return est
    if est.correction != correction and (est.correction, correction) != ("mlp", "graph"):
        raise ValueError(f"cannot start a {correction!r} model from a "
                         f"{est.correction!r} one")
    if units < est.correction_units:
        raise ValueError(f"cannot start a model of {units} correction units from one of "
                         f"{est.correction_units}")
    state = est.network_.state_dict()
    if est.correction != correction:
        state = pointwise_to_graph(state)
    state = widen_corrections(state, units)
    est.set_params(correction=correction, correction_units=units)._build()
    est.network_.load_state_dict(state)
    return est


def _previous_stages(name, init, continue_training=False):
    """Stage records of the model ``init`` was trained as (from its shipped card):
    the stage 1 of a model fine-tuned again (every stage when
    ``continue_training``), every stage of another model that a preset starts
    from (``STARTS``).  A model file that is not shipped brings every stage of
    the card beside it (``NAME.json``, as ``train_pretrained`` writes), if any."""
    card_beside = Path(init).with_suffix(".json")
    if Path(init).resolve().parent != MODEL_DIR.resolve():
        if not card_beside.exists():
            return []
        return json.loads(card_beside.read_text())["training"]["stages"]
    source = Path(init).stem if STARTS.get(name) == Path(init).stem else name
    try:
        card = model_card(source)
    except ValueError:
        return []
    if Path(init).resolve() != (MODEL_DIR / f"{source}.pt").resolve():
        return []
    training = card["training"]
    if source != name:
        return [{**st, "name": f"{source}: {st['name']}"} for st in training["stages"]]
    if "stages" in training:
        return [st for st in training["stages"]
                if continue_training or st["name"] == "paper"]
    return [{"name": "paper", "estimator_params": card["estimator_params"],
             **{k: training[k] for k in ("samples_seen", "seconds", "machine", "simulator",
                                         "history") if k in training}}]


#: Made from a shipped model trained further elsewhere: name -> (the model it starts from,
#: the stage's estimator parameters, the command that trained it).  The focal model is
#: the one-off training-budget study's ``paper`` run: Deep CB continued on the paper's
#: simulator alone, in chunks of warm restarts.
ADOPTED = {"deep-cb-joint-focal": (
    "deep-cb-joint", {"loss": "relative", "progressive_steps": 0, "learning_rate": 5e-4,
                      "steps_per_epoch": 20, "batch_size": 32},
    "python -m benchmarks.studies.budget --runs paper --chunks {chunks}")}


def adopt(name, path, samples_seen, seconds, chunks, out_dir=MODEL_DIR, n_eval=256,
          random_state=0):
    """Ship the network at ``path`` as ``name`` (:data:`ADOPTED`): its stages are the
    starting model's plus the one that made it (``samples_seen``, ``seconds``,
    ``chunks`` as its run logged them); exported, validated and carded like every
    shipped model."""
    from .unfolded import UnfoldedSBLRegressor

    start, stage_params, command = ADOPTED[name]
    est = UnfoldedSBLRegressor.load(path, forward=TRAIN_FORWARD, density_ceiling=None)
    stages = [{**st, "name": f"{start}: {st['name']}"}
              for st in model_card(start)["training"]["stages"]]
    stages.append({"name": "paper (focal)", "estimator_params": stage_params,
                   "samples_seen": int(samples_seen), "seconds": round(float(seconds), 1),
                   "machine": f"{platform.machine()}, CPU only",
                   "simulator": "paper defaults (5-20 patches of 2-4 mm, 5-20 dB, white "
                                "noise, T = 100), nominal template",
                   "command": command.format(chunks=chunks)})
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    _save_model(est, name, out_dir)
    return write_card(name, out_dir, stages, model_card(start)["estimator_params"],
                      random_state, n_eval)


def build_parser():
    """``python -m unfolded_sbl.zoo``: the maintainers' command that (re)trains a
    shipped model from its preset."""
    import argparse

    train = argparse.ArgumentParser(prog="python -m unfolded_sbl.zoo",
                                    description="retrain a shipped model from its preset "
                                    "(maintainers; users train their own with "
                                    "'unfolded-sbl train')")
    names = sorted({**PRESETS, **DENSER, **DERIVED})
    train.add_argument("name", help="preset: " + ", ".join(names))
    train.add_argument("--out", default=None, help="output folder (default: package models)")
    train.add_argument("--seed", type=int, default=0, help="training seed (default: 0)")
    train.add_argument("--n-eval", type=int, default=256,
                       help="validation samples for the model card (default: 256)")
    train.add_argument("--checkpoint-dir", default=".checkpoints",
                       help="resumable checkpoints (rerun the command to resume)")
    train.add_argument("--from-shipped", action="store_true",
                       help="skip stage 1: fine-tune the shipped model on the robust "
                            "distribution (stage 2 only)")
    train.add_argument("--init", default=None, metavar="PATH",
                       help="skip stage 1: fine-tune the model file PATH (e.g. a stage 1+2 "
                            "run's --out) instead of the shipped one")
    train.add_argument("--noise-correction", choices=["mlp", "none"], default=None,
                       help="the preset's noise corrections (default) or none: the "
                            "classical noise update in every layer")
    train.add_argument("--continue", dest="continue_", action="store_true",
                       help="one more stage 2 on top of the shipped model (its card keeps "
                            "every earlier stage); for a model of zoo.DENSER, the stages "
                            "its card does not list yet")
    train.add_argument("--low-snr", action="store_true",
                       help="stage 2 with a third, low-SNR component (zoo.LOW_SNR)")
    train.add_argument("--dense", action="store_true",
                       help="stage 2 with a many-patch component (zoo.DENSE)")
    train.add_argument("--wide", action="store_true",
                       help="stage 2 with a wide-patch component (zoo.WIDE)")
    train.add_argument("--epochs", type=int, default=None,
                       help="stage-2 epochs (default: the preset's budget)")
    train.add_argument("--units", type=int, default=None,
                       help="hidden units of the corrections (default: the preset's, 32); "
                            "with --continue/--from-shipped the shipped weights are widened "
                            "to the same function")
    train.add_argument("--focus", type=float, default=None,
                       help="stage-2 mixture_focus: draw the worst validation components "
                            "more often (default: 0, even draws)")
    return train


def main(argv=None):
    return _train(build_parser().parse_args(argv))


def _train(args):
    from .evaluation import format_table

    common = dict(out_dir=args.out or MODEL_DIR, random_state=args.seed, n_eval=args.n_eval,
                  checkpoint_dir=args.checkpoint_dir)
    if args.name in DERIVED:  # made from a shipped model, no training
        card = derive(args.name, out_dir=common["out_dir"], n_eval=args.n_eval)
    elif args.name in DENSER:
        card = train_denser(args.name, continue_training=args.continue_, **common)
    else:
        init = MODEL_DIR / f"{args.name}.pt" if args.from_shipped or args.continue_ else None
        init = args.init or init
        robust = {"max_epochs": args.epochs} if args.epochs else {}
        if args.focus:
            robust["mixture_focus"] = args.focus
        overrides = {"correction_units": args.units} if args.units else {}
        if args.noise_correction:
            overrides["noise_correction"] = args.noise_correction
        card = train_pretrained(args.name, init=init, overrides=overrides or None,
                                robust_overrides=robust or None, low_snr=args.low_snr,
                                dense=args.dense, wide=args.wide,
                                continue_training=args.continue_, **common)
    print(format_table(card["validation"]["metrics"]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
