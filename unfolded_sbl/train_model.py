"""Train learned corrections for your own forward model, with a model card.

:func:`train_model` is what ``unfolded-sbl train`` runs: an
:class:`~unfolded_sbl.UnfoldedSBLRegressor` trained on fresh simulations of the
user's forward model (a shipped template, a standard cap built offline, or a
``-fwd.fif``) for a plain budget of samples, checkpointed so that the same
command resumes, then validated against ClassicalCB on held-out simulations and
described in a card beside the weights (``my-model.pt`` and ``my-model.json``).
"""

from __future__ import annotations

import json
import math
import platform
from pathlib import Path

import numpy as np

from .resolve import resolve_forward

#: Adam steps per epoch of a user training run (one validation per epoch).
STEPS_PER_EPOCH = 20


def budget(n_samples, batch_size):
    """Epochs of :data:`STEPS_PER_EPOCH` steps of ``batch_size`` that see at least
    ``n_samples`` samples."""
    if not isinstance(n_samples, (int, np.integer)) or n_samples < batch_size:
        raise ValueError(f"n_samples must be an integer >= batch_size ({batch_size}), got "
                         f"{n_samples!r}")
    return math.ceil(n_samples / (batch_size * STEPS_PER_EPOCH))


def train_model(forward, out, correction="mlp", n_samples=20_000, noise="learn",
                n_layers=25, batch_size=32, learning_rate=2e-3, n_eval=64, random_state=0,
                checkpoint=None, verbose=True):
    """Train corrections for ``forward``, save them to ``out`` and write their card.

    Parameters
    ----------
    forward : str | Path | ForwardModel | mne.Forward
        A template name, an MNE standard montage (built offline), a file or a
        forward model (:func:`unfolded_sbl.resolve.resolve_forward`).
    out : str | Path
        The model file (``.pt``); the card goes beside it (``.json``).
    correction : {"mlp", "attention", "graph", "bias"}
        The learned correction of each layer.
    n_samples : int
        Training budget in simulated samples (fresh ones every step).  Launched by
        ``torchrun`` on several processes, ``batch_size`` is each rank's and the
        budget is counted over all ranks.
    noise : {"learn", "known"}
        Joint noise learning, or noise variances given at ``predict``.
    n_layers, batch_size, learning_rate
        As :class:`~unfolded_sbl.UnfoldedSBLRegressor`.
    n_eval : int
        Held-out samples for the card's validation against ClassicalCB.
    random_state : int
        Seed of the weights, the training stream and the validation.
    checkpoint : str | Path | None
        Resumable checkpoint (default: ``out`` with ``.ckpt``); rerunning the same
        call resumes from it.
    verbose : bool
        Progress bars (with time left).

    Returns
    -------
    card : dict
    """
    from .unfolded import UnfoldedSBLRegressor

    if noise not in ("learn", "known"):
        raise ValueError(f"noise must be 'learn' or 'known', got {noise!r}")
    out = Path(out)
    if out.suffix != ".pt":
        raise ValueError(f"out must be a .pt file, got {str(out)!r}")
    fwd = resolve_forward(forward, log=print if verbose else None)
    params = dict(correction=correction, n_layers=n_layers, learn_noise=noise == "learn",
                  noise_correction="mlp" if noise == "learn" else "none",
                  batch_size=batch_size, learning_rate=learning_rate,
                  max_epochs=budget(n_samples, batch_size * _n_ranks()),
                  steps_per_epoch=STEPS_PER_EPOCH,
                  progressive_steps=0)
    out.parent.mkdir(parents=True, exist_ok=True)
    checkpoint = Path(checkpoint) if checkpoint else out.with_suffix(".ckpt")
    est = UnfoldedSBLRegressor(forward=fwd, random_state=random_state,
                               checkpoint=str(checkpoint), verbose=verbose, **params)
    est.fit_simulated()
    from .distributed import world

    if world()[0] != 0:  # every rank holds the same weights: rank 0 writes them
        return None
    est.save(out)
    card = {"name": out.stem, "format_version": 2,
            "description": f"{correction} corrections trained for {fwd.name or 'a user forward'}",
            "estimator_params": params, "seed": random_state, "dtype": est.dtype,
            "train_spacing_m": est.train_spacing_,
            "training": {"forward": fwd.name, "n_channels": fwd.n_channels,
                         "n_sources": fwd.n_sources,
                         "data": "streamed from the simulator, fresh samples every step",
                         "samples_seen": int(params["max_epochs"] * STEPS_PER_EPOCH
                                             * batch_size * _n_ranks()),
                         "processes": _n_ranks(),
                         "seconds": round(est.train_seconds_, 1),
                         "machine": platform.machine()},
            "validation": validate(est, fwd, n_eval, 10_000 + random_state),
            "versions": versions(),
            "files": {out.name: file_record(out)}}
    with open(out.with_suffix(".json"), "w") as fid:
        json.dump(card, fid, indent=2, default=float)
    return card


def _n_ranks():
    """Processes of a ``torchrun`` launch (joined first), else 1."""
    from .distributed import init_from_env

    return init_from_env()[1]


def validate(est, forward, n_eval, seed):
    """Metrics of ``est`` and ClassicalCB at the same depth on ``n_eval`` held-out
    simulations of ``forward`` (the paper's simulator)."""
    from .estimators import ClassicalCB
    from .evaluation import evaluate
    from .simulate import simulate

    data = simulate(forward, n_eval, random_state=seed)
    noise = "learn" if est.learn_noise else "known"
    estimators = {f"ClassicalCB ({noise}), {est.n_layers} it.":
                  ClassicalCB(forward, noise=noise, n_iter=est.n_layers).fit(), "model": est}
    kwargs = {} if est.learn_noise else {k: {"noise_var": data.noise_var} for k in estimators}
    return {"n_samples": n_eval, "seed": seed, "simulator": "paper",
            "metrics": evaluate(estimators, data, forward, kwargs)}


def versions():
    """Versions of the packages a model file depends on."""
    import sklearn
    import torch

    from . import __version__

    return {"unfolded_sbl": __version__, "torch": torch.__version__,
            "numpy": np.__version__, "scikit-learn": sklearn.__version__}


def file_record(path):
    """A card's record of a file: sha256 and size."""
    from .pretrained import sha256

    return {"sha256": sha256(path), "bytes": Path(path).stat().st_size}
