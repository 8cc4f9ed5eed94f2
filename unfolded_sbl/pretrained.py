"""The shipped pretrained models: list them, read their cards, load them verified.

Each model ``NAME`` ships as ``NAME.pt`` (torch weights and config, for
fine-tuning), ``NAME.onnx`` (deployment) and ``NAME.json`` (model card: training
data and simulator settings, budget, seed, versions, validation metrics against
ClassicalCB, sha256 of the files).  The files live in the package
(``unfolded_sbl/data/models``; the repository's ``exported_models/`` points
there), so an installed package finds them too.  How they are made is
:mod:`unfolded_sbl.zoo` (maintainers' recipes).
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

logger = logging.getLogger("unfolded_sbl")

MODEL_DIR = Path(__file__).parent / "data" / "models"
#: The template every shipped model was trained on.
TRAIN_FORWARD = "biosemi64-ico3"
#: Models that run on another template by default: name -> template.
DEFAULT_FORWARDS = {"deep-graph-cb-joint-ico4": "biosemi64-ico4"}
DESCRIPTIONS = {
    "deep-cb-joint": "Deep CB: pointwise-MLP corrections, joint noise",
    "deep-cb-known": "Deep CB: pointwise-MLP corrections, known noise",
    "deep-attn-cb-joint": "Deep Attn CB: attention corrections, joint noise",
    "deep-graph-cb-joint": "Deep Graph CB: MLP corrections that also see each source's "
                           "cortical neighbourhood (8 mm kernel along the mesh), joint noise",
    "deep-graph-cb-joint-ico4": "Deep Graph CB for source spaces about 2x denser than "
                                "ico3 (ico4): trained at ico3 on patches 2x wider",
    "deep-cb-joint-focal": "Deep CB trained further on the paper's focal patches alone: "
                           "a focal prior, gains on focal sources, loses on wide patches",
    "deep-cb-joint-classical-noise": "Deep CB without its noise corrections: pointwise-MLP "
                                     "corrections of the source updates, classical joint "
                                     "noise updates",
}

#: name -> ``density_ceiling`` that :func:`load_pretrained` sets: the regime check
#: solves samples whose learned estimate spreads over more than this fraction of the
#: sources classically, where the corrections stop helping (the choice is measured by
#: ``python -m benchmarks.studies.noise_ablation``).  The ico4 model's estimates spread
#: wider by design (wide patches on a dense source space): no ceiling.
DENSITY_CEILINGS = {"deep-cb-joint": 0.1, "deep-cb-known": 0.1, "deep-attn-cb-joint": 0.1,
                    "deep-graph-cb-joint": 0.1, "deep-cb-joint-classical-noise": 0.1,
                    "deep-cb-joint-focal": 0.1}

#: The modalities and orientations every shipped model was trained for; ``apply``
#: solves anything else with ClassicalCB at the same depth and says so.
SUPPORTS = ("EEG in volts, fixed orientation (normal to the cortex); whitened MEG and "
            "MEG+EEG with fixed orientation zero-shot; free or loose orientation is solved "
            "by ClassicalCB")


def list_pretrained(forward=None, details=False):
    """Names of the shipped models (those with a model card); with ``forward``, only
    those whose corrections act on its source space (:func:`suits`).

    With ``details=True``, one dict per model instead: ``name``, ``description``,
    ``prior`` (the distribution it was trained on, which decides where it gains),
    ``median_ratio`` (its median rMSE ratio to ClassicalCB over the robustness
    matrix's conditions where its corrections act), ``nominal`` and ``perturbed``
    (the matrix's first two rows) and ``loses`` (condition -> ratio, every
    condition above 1.005), from its card's ``summary``; and ``supports``: what it
    was trained for (:data:`SUPPORTS`).
    """
    names = sorted(p.stem for p in MODEL_DIR.glob("*.json"))
    names = names if forward is None else [n for n in names if suits(n, forward)]
    if not details:
        return names
    rows = []
    for name in names:
        card = model_card(name)
        summary = card.get("summary", {})
        rows.append({"name": name, "description": card.get("description", name),
                     **{k: summary.get(k) for k in ("prior", "median_ratio", "nominal",
                                                    "perturbed", "loses")},
                     "supports": SUPPORTS})
    return rows


def sha256(path):
    digest = hashlib.sha256()
    with open(path, "rb") as fid:
        for block in iter(lambda: fid.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def model_card(name):
    """The model card (a dict) of a shipped model."""
    path = MODEL_DIR / f"{name}.json"
    if not path.exists():
        raise ValueError(f"unknown pretrained model {name!r}; available: {list_pretrained()}")
    with open(path) as fid:
        return json.load(fid)


def pretrained_path(name, kind="pt"):
    """Path of a shipped model file after checking its sha256 against the card."""
    card = model_card(name)
    path = MODEL_DIR / f"{name}.{kind}"
    if not path.exists():
        raise ValueError(f"pretrained model file {path.name} is missing")
    expected = card["files"][path.name]["sha256"]
    if sha256(path) != expected:
        raise ValueError(f"{path} does not match the sha256 in its model card: the file "
                         "is corrupted or was modified")
    return path


def load_pretrained(name, forward=None, backend="torch", **kwargs):
    """Load a shipped model, verified against its model card.

    Parameters
    ----------
    name : str
        One of :func:`list_pretrained`, e.g. ``"deep-cb-joint"``.
    forward : str | ForwardModel | mne.Forward | None
        Forward model to run on (default: :func:`default_forward`).  MLP and attention
        models run on any cap and source space; their corrections act where the
        source spacing is near the one they were trained for (:func:`suits`),
        elsewhere the classical updates solve.
    backend : {"torch", "onnx"}
        ``"torch"`` returns an :class:`UnfoldedSBLRegressor` (fine-tunable),
        ``"onnx"`` a fitted :class:`OnnxSBLRegressor`.
    **kwargs
        Passed to :meth:`UnfoldedSBLRegressor.load` for torch (``dtype``,
        ``device``) and to :class:`OnnxSBLRegressor` for onnx (``providers``,
        ``intra_op_num_threads``, ...); ``density_ceiling`` defaults to the
        model's :data:`DENSITY_CEILINGS` entry.
    """
    from .forward import list_forwards
    from .resolve import resolve_forward

    forward = forward or default_forward(name)
    # resolved once, for the checks below and for the load (an mne.Forward or a file
    # would otherwise be converted by each check); a template keeps its name
    resolved = resolve_forward(forward)
    if not (isinstance(forward, str) and forward in list_forwards()):
        forward = resolved
    kwargs.setdefault("density_ceiling", DENSITY_CEILINGS.get(name))
    if kwargs.get("regime_check", True) and not suits(name, resolved):
        # the estimator warns that it solves classically; say which model would not
        others = [other for other in list_pretrained(resolved) if other != name]
        if others:
            logger.warning("%s's corrections do not act on this source space; the shipped "
                           "models whose corrections do: %s", name, ", ".join(others))
    if backend == "torch":
        from .unfolded import UnfoldedSBLRegressor

        return UnfoldedSBLRegressor.load(pretrained_path(name, "pt"), forward=forward,
                                         **kwargs)
    if backend == "onnx":
        from .onnx_runtime import OnnxSBLRegressor

        return OnnxSBLRegressor(pretrained_path(name, "onnx"), forward=forward,
                                **kwargs).fit()
    raise ValueError(f"backend must be 'torch' or 'onnx', got {backend!r}")


def default_forward(name):
    """The template a shipped model runs on unless told otherwise."""
    return DEFAULT_FORWARDS.get(name, TRAIN_FORWARD)


def suits(name, forward):
    """Whether the corrections of the shipped model ``name`` act on ``forward``'s
    source space: its spacing within ``regime.acting_spacings`` of the model
    (within ``regime.SPACING_TOLERANCE`` of its training spacing, or the range its
    card records; elsewhere the classical updates solve)."""
    from .forward import load_forward, source_spacing
    from .regime import acting_spacings
    from .resolve import resolve_forward

    card = model_card(name)
    trained = card.get("train_spacing_m") or source_spacing(load_forward(TRAIN_FORWARD))
    finest, coarsest = acting_spacings(trained, card.get("spacing_range_m"))
    return finest <= source_spacing(resolve_forward(forward)) <= coarsest
