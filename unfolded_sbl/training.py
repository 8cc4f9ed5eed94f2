"""Training of the unfolded network: progressive layer-wise phase, then joint
fine-tuning with stochastic deep supervision.  Checkpointed and resumable.

Loss: per-sample relative squared error ``||Xhat - X||^2 / ||X||^2`` of the final
posterior mean (scale-free, so samples of any amplitude weigh alike), plus
``deep_supervision`` times the mean of the same loss on ``n_deep`` intermediate
layers drawn at random per mini-batch (never the last).

``loss="classical_relative"`` divides each sample's errors by the error of the
classical solver at the same depth on the same sample (computed without
gradient), plus ``CLASSICAL_FLOOR``: every sample then counts by how much it
improves on (or loses to) the classical solver, so hard samples (wide patches,
low SNR) no longer dominate the gradient, and the floor keeps samples the
classical solver solves almost exactly (noise-free data) from dominating it
instead.  The loss is asymmetric: with ``r`` that ratio,
it is ``r + LOSS_PENALTY * max(r - 1, 0)``, so that a correction that helps
some samples by hurting others does not pay (the learned solver is meant to
degrade towards the classical one, never below it).

Speed: the network sees the data only through ``Y Y^T``, and its estimate is
linear in ``Y`` (``Xhat = W Y``), so a training batch with more time samples
than channels is first compressed onto the row space of ``Y``
(:func:`compress_batch`): the loss and its gradient are exactly those of the
full batch, at the cost of N instead of T columns in every posterior mean and
loss term (the (batch x sources x time) element-wise work dominated a step).
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass

import numpy as np
import torch

from ._champagne import row_space
from .distributed import world
from .metrics import f1 as f1_score
from .network import TRAINED_N_TIMES

#: Added to the classical error in the classical-relative loss.
CLASSICAL_FLOOR = 0.02
#: Extra weight of the part of a sample's error ratio above 1 (losing to the
#: classical solver costs 1 + LOSS_PENALTY times what winning gains).
LOSS_PENALTY = 2.0
LOSSES = ("relative", "classical_relative")


def sample_errors(pred, target, compressed=None):
    """Per-sample ``||pred - target||^2 / ||target||^2``, shape (B,).

    ``compressed`` is the third output of :func:`compress_batch` when ``pred``
    and ``target`` are compressed ones: the errors are then those of the full
    (uncompressed) estimate.
    """
    diff = pred - target
    num = (diff * diff).sum(dim=(1, 2))
    if compressed is None:
        den = (target * target).sum(dim=(1, 2))
    else:
        scale, unreachable, den = compressed
        num = num * scale + unreachable
    return num / den.clamp(min=torch.finfo(target.dtype).tiny)


def compress_batch(Y, X):
    """Compress a batch onto the row space of ``Y`` without changing the network's
    view of it or the loss.

    With ``Y^T = Q R`` (thin QR, Q: T x N orthonormal), ``Y = R^T Q^T``, so
    ``Yc = sqrt(N / T) R^T`` (B, N, N) has ``Yc Yc^T / N = Y Y^T / T`` (the
    statistics, noise floor and posterior precision of every layer are the
    same) and the estimate ``W Yc`` is ``sqrt(N / T) W Y Q``.  With
    ``Xc = sqrt(N / T) X Q``::

        ||W Y - X||^2 = (T / N) ||W Yc - Xc||^2 + (||X||^2 - ||X Q||^2)

    (the second term is the part of X that no estimate linear in Y can reach).
    Batches with T <= N are returned unchanged.

    Returns
    -------
    Yc : tensor (B, N, min(N, T))
    Xc : tensor (B, M, min(N, T))
    compressed : (scale, unreachable (B,), total (B,)) | None
        For :func:`sample_errors`; None when nothing was compressed.
    """
    n_channels, n_times = Y.shape[-2:]
    if n_times <= n_channels:
        return Y, X, None
    Yc, Q, shrink = row_space(Y)
    Xq = X @ Q
    total = (X * X).sum(dim=(1, 2))
    unreachable = (total - (Xq * Xq).sum(dim=(1, 2))).clamp(min=0)
    return Yc, shrink * Xq, (n_times / n_channels, unreachable, total)


def relative_error(pred, target):
    """Mean over samples of ``||pred - target||^2 / ||target||^2``."""
    return sample_errors(pred, target).mean()


def _ratio_parts(record):
    """Validation error ratios to the classical solver, one per mixture part."""
    return record.get("val_ratio_parts", [record["val_ratio"]])


@dataclass
class TrainSettings:
    max_epochs: int = 10
    steps_per_epoch: int = 50
    progressive_steps: int = 10
    batch_size: int = 32
    learning_rate: float = 1e-3
    deep_supervision: float = 0.3
    n_deep: int = 5
    grad_clip: float = 1.0
    loss: str = "relative"
    compress: bool = True
    select_best: bool | str = False
    mixture_focus: float = 0.0
    checkpoint: str | None = None
    verbose: bool = True


class Trainer:
    """Train an :class:`UnfoldedChampagne` on batches from ``draw_batch``.

    Parameters
    ----------
    model : UnfoldedChampagne
    lead_field : tensor (N, M), normalised
    draw_batch : callable(batch_size, rng) -> (Y, X, noise_var or None) tensors
        Normalised training batches (fresh samples each call when streaming).
        With ``settings.mixture_focus`` and a validation set per mixture
        component, it is called as ``draw_batch(batch_size, rng, weights)``:
        ``weights`` (one per component, summing to 1) are the probabilities of
        drawing the batch from each component (:meth:`Trainer.mixture_weights`).
    validation : tuple of tensors | list of tuples | None
        Fixed normalised validation set ``(Y, X, noise_var or None)``, or one
        per mixture component (metrics are averaged over them).
    settings : TrainSettings
    random_state : int | None
    geometry : dict | None
        Further network inputs (``neighbours`` of the graph correction).
    """

    def __init__(self, model, lead_field, draw_batch, validation, settings, random_state=None,
                 geometry=None):
        self.model = model
        self.lead_field = lead_field
        self.geometry = dict(geometry or {})
        self.draw_batch = draw_batch
        self.validation = validation
        self.s = settings
        self.rng = np.random.default_rng(random_state)
        self.history = []
        self.state = {"phase": "progressive", "layer": 0, "epoch": 0, "seconds": 0.0}
        self.best = None  # (score, epoch, state_dict) with settings.select_best
        self._clock = time.perf_counter()
        # the gradient's forward pass: the model, or its DistributedDataParallel wrapper
        # when ranks train together (the gradients are then averaged across them)
        self.rank, n_ranks = world()
        self.forward_model = model
        if n_ranks > 1:
            if settings.progressive_steps > 0:
                raise ValueError("distributed training runs the joint phase only: set "
                                 "progressive_steps=0")
            from torch.nn.parallel import DistributedDataParallel

            self.forward_model = DistributedDataParallel(model, find_unused_parameters=True)

    # -- checkpoints -----------------------------------------------------------------
    def _save(self, optimizer, scheduler=None):
        now = time.perf_counter()
        self.state["seconds"] = self.state.get("seconds", 0.0) + now - self._clock
        self._clock = now
        if not self.s.checkpoint or self.rank != 0:  # every rank holds the same state
            return
        tmp = f"{self.s.checkpoint}.tmp"
        torch.save({"model": self.model.state_dict(), "best": self.best,
                    "optimizer": optimizer.state_dict(),
                    "scheduler": None if scheduler is None else scheduler.state_dict(),
                    "state": dict(self.state), "history": self.history,
                    "rng": self.rng.bit_generator.state}, tmp)
        os.replace(tmp, self.s.checkpoint)  # atomic: an interrupt never leaves half a file

    def _load(self):
        if not self.s.checkpoint or not os.path.exists(self.s.checkpoint):
            return None
        device = next(self.model.parameters(), torch.empty(0)).device
        ckpt = torch.load(self.s.checkpoint, weights_only=False, map_location=device)
        self.model.load_state_dict(ckpt["model"])
        self.best = ckpt.get("best")
        self.state = ckpt["state"]
        self.history = ckpt["history"]
        self.rng.bit_generator.state = ckpt["rng"]
        self._clock = time.perf_counter()
        return ckpt["optimizer"], ckpt["scheduler"]

    # -- steps -----------------------------------------------------------------------
    def _loss(self, n_layers_active=None, deep=True):
        weights = self.state.get("mixture_weights")
        Y, X, noise = (self.draw_batch(self.s.batch_size, self.rng) if weights is None
                       else self.draw_batch(self.s.batch_size, self.rng, weights))
        compressed = None
        # the network reads T only to fade its corrections below TRAINED_N_TIMES windows:
        # compressing T > N to N changes nothing when N is above that range
        if self.s.compress and Y.shape[-2] >= TRAINED_N_TIMES[1]:
            Y, X, compressed = compress_batch(Y, X)
        n_active = n_layers_active or self.model.n_layers
        layers = ()
        if deep and self.s.deep_supervision > 0 and n_active > 1:
            k = min(self.s.n_deep, n_active - 1)
            layers = tuple(self.rng.choice(n_active - 1, size=k, replace=False).tolist())
        out = self.forward_model(Y, self.lead_field, noise, return_layers=layers,
                                 n_layers_active=n_active, **self.geometry)
        weight = 1.0
        if self.s.loss == "classical_relative":
            with torch.no_grad():
                reference = self.model(Y, self.lead_field, noise, n_layers_active=n_active,
                                       classical=True, **self.geometry)["sources"]
                weight = 1.0 / (sample_errors(reference, X, compressed) + CLASSICAL_FLOOR)
        loss = self._reduce(sample_errors(out["sources"], X, compressed), weight)
        if layers:
            deep_loss = torch.stack([self._reduce(
                sample_errors(out["intermediate"][k], X, compressed), weight)
                for k in layers]).mean()
            loss = loss + self.s.deep_supervision * deep_loss
        return loss

    def _reduce(self, errors, weight):
        if self.s.loss != "classical_relative":
            return errors.mean()
        ratio = errors * weight
        return (ratio + LOSS_PENALTY * torch.relu(ratio - 1.0)).mean()

    def _step(self, optimizer, params, **kwargs):
        """One optimiser step; a batch whose loss or gradient is not finite is skipped
        (counted in ``state["skipped"]``) instead of poisoning the weights."""
        optimizer.zero_grad()
        try:
            loss = self._loss(**kwargs)
        except ValueError:  # a degenerate simulated sample (safe_cholesky gave up)
            loss = None
        if loss is not None and torch.isfinite(loss):
            loss.backward()
            norm = torch.nn.utils.clip_grad_norm_(params, self.s.grad_clip)
            if torch.isfinite(norm):
                optimizer.step()
                return loss.item()
        self.state["skipped"] = self.state.get("skipped", 0) + 1
        optimizer.zero_grad()
        return float("nan")

    @torch.no_grad()
    def validate(self):
        """Validation metrics, averaged over the validation parts (mixture components)."""
        if self.validation is None:
            return {}
        parts = self.validation if isinstance(self.validation, list) else [self.validation]
        self.model.eval()
        if not hasattr(self, "_val_classical"):
            self._val_classical = [float(relative_error(
                self.model(Y, self.lead_field, noise, classical=True,
                           **self.geometry)["sources"], X))
                for Y, X, noise in parts]
        scores = []
        for (Y, X, noise), classical in zip(parts, self._val_classical):
            pred = self.model(Y, self.lead_field, noise, **self.geometry)["sources"]
            value = float(relative_error(pred, X))
            scores.append((value, value / max(classical, 1e-30),
                           float(f1_score(X.double().cpu().numpy(),
                                          pred.double().cpu().numpy()))))
        self.model.train()
        val_rmse, val_ratio, val_f1 = np.mean(scores, axis=0)
        record = {"val_rmse": float(val_rmse), "val_ratio": float(val_ratio),
                  "val_f1": float(val_f1)}
        if len(parts) > 1:
            record["val_ratio_parts"] = [round(s[1], 4) for s in scores]
        return record

    # -- phases ----------------------------------------------------------------------
    def _layer_params(self, k):
        params = list(self.model.source_corrections[k].parameters())
        params += list(self.model.noise_corrections[k].parameters())
        return params

    def run(self):
        from tqdm.auto import tqdm

        saved_optimizer, saved_scheduler = self._load() or (None, None)
        model, s = self.model, self.s
        model.train()
        n_trainable = model.n_layers - 1
        all_params = [p for p in model.parameters() if p.requires_grad]
        if not all_params or s.max_epochs == 0:
            return self.history
        if self.state["phase"] == "progressive":
            if s.progressive_steps > 0:
                bar = tqdm(range(self.state["layer"], n_trainable),
                           desc=f"phase 1/2 progressive ({s.progressive_steps} steps/layer)",
                           unit="layer", disable=not s.verbose)
                for k in bar:
                    params = self._layer_params(k)
                    if k > 0:  # start layer k from layer k-1
                        for name in ("source_corrections", "noise_corrections"):
                            modules = getattr(model, name)
                            modules[k].load_state_dict(modules[k - 1].state_dict())
                    for p in model.parameters():
                        p.requires_grad_(False)
                    for p in params:
                        p.requires_grad_(True)
                    optimizer = torch.optim.Adam(params, lr=s.learning_rate)
                    losses = []
                    for _ in range(s.progressive_steps):
                        losses.append(self._step(optimizer, params, n_layers_active=k + 1,
                                                 deep=False))
                        bar.set_postfix(layer=k, loss=f"{losses[-1]:.4f}")
                    self.history.append({"phase": "progressive", "layer": k,
                                         "steps": s.progressive_steps,
                                         "loss": float(np.nanmean(losses))})
                    self.state["layer"] = k + 1
                    self._save(optimizer)
            # joint from here, also without a progressive phase, so that a resumed
            # run restores the joint phase's optimiser and scheduler
            self.state = {"phase": "joint", "layer": n_trainable, "epoch": 0,
                          "seconds": self.state["seconds"]}
        for p in model.parameters():
            p.requires_grad_(True)
        optimizer = torch.optim.Adam(all_params, lr=s.learning_rate)
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=s.max_epochs)
        if saved_scheduler is not None and self.state["phase"] == "joint":
            optimizer.load_state_dict(saved_optimizer)
            scheduler.load_state_dict(saved_scheduler)
        if s.select_best == "relative" and "start_validation" not in self.state:
            self._keep_start()
        bar = tqdm(range(self.state["epoch"], s.max_epochs),
                   desc=f"phase 2/2 joint ({s.steps_per_epoch} steps/epoch)", unit="epoch",
                   disable=not s.verbose)
        for epoch in bar:
            losses = [self._step(optimizer, all_params) for _ in range(s.steps_per_epoch)]
            scheduler.step()
            record = {"phase": "joint", "epoch": epoch, "steps": s.steps_per_epoch,
                      "loss": float(np.nanmean(losses)), **self.validate()}
            self.history.append(record)
            self._keep_best(record)
            self._refocus(record)
            bar.set_postfix({k: f"{v:.4f}" if isinstance(v, float) else str(v)
                             for k, v in record.items() if k not in ("epoch", "phase", "steps")})
            self.state["epoch"] = epoch + 1
            self._save(optimizer, scheduler)
        if self.s.select_best and self.best is not None:
            self.model.load_state_dict(self.best[2])
            self.state["best_epoch"] = self.best[1]
        return self.history

    def _keep_start(self):
        """``select_best="relative"``: validate the network before the joint phase and
        keep it as the candidate to beat (score 1, epoch -1)."""
        record = self.validate()
        if "val_ratio" not in record:
            return
        self.state["start_validation"] = record
        self.best = (1.0, -1, {k: v.detach().clone() for k, v in self.model.state_dict().items()})

    def _scored_parts(self, record):
        """``record``'s validation ratios per mixture part, to the classical solver,
        or with ``select_best="relative"`` to the starting network's ratios."""
        parts = _ratio_parts(record)
        start = self.state.get("start_validation")
        if self.s.select_best == "relative" and start:
            parts = [p / max(s, 1e-30) for p, s in zip(parts, _ratio_parts(start))]
        return [float(p) for p in parts]

    def _refocus(self, record):
        """``mixture_focus``: draw the next epoch's batches from each mixture component
        with a probability that grows with its validation ratio (to the starting
        network's under ``select_best="relative"``, else to the classical solver's):
        ``p ~ exp(mixture_focus * ratio)``, a group-DRO reweighting that spends the
        steps where the network is worst instead of evenly, so that improving one
        component at another's expense pays less (see the documentation's "Training
        distribution of the shipped models" for what it did)."""
        weights = self.mixture_weights(record)
        if weights is not None:
            self.state["mixture_weights"] = weights
            record["mixture_weights"] = [round(w, 4) for w in weights]

    def mixture_weights(self, record):
        """Component probabilities for ``record`` (None: even draws)."""
        if not self.s.mixture_focus or "val_ratio_parts" not in record:
            return None
        parts = np.asarray(self._scored_parts(record))
        logits = self.s.mixture_focus * (parts - parts.max())
        weights = np.exp(logits) / np.exp(logits).sum()
        return [float(w) for w in weights]

    def _keep_best(self, record):
        """Remember the weights of the epoch whose worst validation part (mixture
        component) has the lowest error ratio to the classical solver; with
        ``select_best="relative"``, the lowest ratio to the network's own error
        before the joint phase, so that the kept weights are no worse than the
        starting ones on any part (the start itself is kept otherwise)."""
        if not self.s.select_best or "val_ratio" not in record:
            return
        score = max(self._scored_parts(record))
        if self.best is None or score < self.best[0]:
            self.best = (score, record["epoch"],
                         {k: v.detach().clone() for k, v in self.model.state_dict().items()})
