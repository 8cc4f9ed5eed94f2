"""UnfoldedSBLRegressor: the unfolded Champagne network as a scikit-learn estimator."""

from __future__ import annotations

import copy
import numbers
from functools import partial

import numpy as np
import torch

from . import __version__
from ._base import _DTYPES
from ._network_base import _NetworkEstimator
from ._validation import (
    check_device,
    check_finite_array,
    check_optional_fraction,
    check_positive_int,
    check_spacing_range,
)
from .distributed import init_from_env
from .forward import list_forwards, load_forward, mesh_neighbourhoods, source_spacing
from .network import (
    CORRECTIONS,
    NOISE_CORRECTIONS,
    UnfoldedChampagne,
    upgrade_state_dict,
)
from .resolve import perturbed_variant
from .simulate import Simulator
from .training import LOSSES, Trainer, TrainSettings

MODEL_FORMAT = "unfolded_sbl.network"
MODEL_FORMAT_VERSION = 1
_CONFIG_KEYS = ("n_layers", "correction", "noise_correction", "learn_noise",
                "init_source_var", "init_noise_var", "prune_threshold", "attention_keys",
                "correction_units")


def _ensemble_for(forward, kind, verbose):
    """The head-model ensemble named by ``simulator_params["head_models"]``."""
    from .head_models import load_head_ensemble

    if kind != "ensemble":
        raise ValueError(f"simulator_params['head_models'] must be 'ensemble' or a "
                         f"HeadModelEnsemble, got {kind!r}")
    if forward.variant != "nominal" or forward.name not in list_forwards():
        raise ValueError("head_models='ensemble' needs a shipped template forward model, "
                         f"nominal variant (one of {list_forwards()}), got {forward!r}")
    return load_head_ensemble(forward.cap, forward.spacing, verbose=verbose)


#: Samples that ``predict`` runs through the network at a time: larger batches gain
#: nothing on a CPU and lose to cache misses (onnxruntime's wrapper runs its graph at
#: the same size, ``OnnxSBLRegressor(batch_size=64)``).
PREDICT_BATCH_SIZE = 64


def _chunks(mask, size):
    """Boolean masks (like ``mask``) of consecutive runs of at most ``size`` of the
    samples that ``mask`` selects."""
    rows = np.flatnonzero(mask)
    for start in range(0, len(rows), size):
        chunk = np.zeros_like(mask)
        chunk[rows[start:start + size]] = True
        yield chunk


def _merge_into(merged, rows, out, n_samples):
    """Write the network outputs ``out`` of the samples ``rows`` (a boolean mask)
    into ``merged``, the outputs of all ``n_samples`` (None on the first call), and
    return it.  Entries are zeros until a part writes them (a classical part has no
    corrections), and each part is written as it comes, so that one part's outputs
    are alive at a time, not all of them."""
    keys = ("sources", "source_var", "noise_var")
    if merged is None:
        merged = dict.fromkeys(keys)
        if "trajectory" in out:
            merged["trajectory"] = [dict.fromkeys(state) for state in out["trajectory"]]
    index = torch.as_tensor(rows, device=out["sources"].device)
    pairs = [(merged, out, keys)] + [(target, state, list(state)) for target, state in
                                     zip(merged.get("trajectory", ()), out.get("trajectory", ()))]
    for target, source, names in pairs:
        for key in names:
            value = source[key]
            if value is None:
                continue
            if target[key] is None:
                target[key] = value.new_zeros((n_samples,) + value.shape[1:])
            target[key][index] = value
    return merged


def _cast(out, dtype):
    """Network outputs (sources, variances, intermediate and trajectory states) in
    ``dtype``."""
    def cast(value):
        return value.to(dtype) if torch.is_tensor(value) else value

    cast_out = {key: cast(value) for key, value in out.items()}
    cast_out["intermediate"] = {k: cast(v) for k, v in out["intermediate"].items()}
    if "trajectory" in out:
        cast_out["trajectory"] = [{k: cast(v) for k, v in state.items()}
                                  for state in out["trajectory"]]
    return cast_out


def _expanded(out, expand):
    """Network outputs with every posterior mean mapped back by ``expand``
    (:meth:`_NetworkEstimator._on_row_space`)."""
    out["sources"] = expand(out["sources"])
    out["intermediate"] = {k: expand(v) for k, v in out["intermediate"].items()}
    for state in out.get("trajectory", ()):
        state["sources"] = expand(state["sources"])
    return out


class UnfoldedSBLRegressor(_NetworkEstimator):
    """Unfolded Champagne with learned corrections (Bias / Deep / Deep Attn CB).

    Parameters
    ----------
    forward : str | ForwardModel | mne.Forward | None
        Forward model the network is trained and run on.
    correction : {"none", "bias", "mlp", "graph", "attention"}
        Source-branch correction: a learned per-source bias (tied to one source
        space), a pointwise MLP (Deep CB), the same MLP that also sees each
        source's neighbourhood along the cortical mesh (``"graph"``, mm-defined
        neighbourhoods, see ``unfolded_sbl.forward.GRAPH_SIGMA``), or global
        self-attention over the sources (Deep Attn CB).
    noise_correction : {"none", "bias", "mlp"}
        Noise-branch correction when ``learn_noise``.
    learn_noise : bool
        Joint noise learning (True) or known noise passed to ``predict``.
    n_layers : int
        Unfolded iterations (default 25); the last layer stays classical.
    max_epochs : int
        Epochs of the joint phase (all layers trained together); 0 builds the
        untrained network, which equals ``ClassicalCB`` with
        ``n_iter=n_layers``.  Training runs two phases: first the progressive
        one, ``(n_layers - 1) * progressive_steps`` steps (layer k trained
        alone, started from layer k-1's weights), then the joint one,
        ``max_epochs * steps_per_epoch`` steps; the total budget is their sum
        times ``batch_size`` samples (``history_`` records both phases).
    steps_per_epoch, batch_size : int
        Mini-batches per joint epoch and their size (also the progressive
        phase's batch size).
    progressive_steps : int
        Steps per layer in the progressive phase (0 skips it); skipped too with
        ``max_epochs=0``.
    learning_rate : float
        Adam learning rate (cosine-annealed over the joint epochs).
    deep_supervision : float
        Weight of the loss on 5 random intermediate layers.
    loss : {"relative", "classical_relative"}
        Training loss: the relative squared error, or the same divided per
        sample by the classical solver's (see ``unfolded_sbl.training``).
    select_best : bool | "relative"
        Keep the weights of the joint epoch whose worst validation part (one
        per mixture component) has the lowest error ratio to the classical
        solver, instead of the last epoch's (``best_epoch_`` says which).
        ``"relative"`` (for continuing a trained network): the lowest ratio to
        the network's own error before the joint phase, the starting weights
        being a candidate too (``best_epoch_ == -1``), so that no part gets
        worse than where training started.
    warm_start : bool
        Continue training the current network (e.g. a loaded pretrained model)
        instead of building a new one.
    n_val : int
        Validation samples, simulated with the ``-perturbed`` variant of a
        template forward model (or the forward itself otherwise).
    simulator_params : dict | list of dict | None
        Keyword arguments of :class:`Simulator` for ``fit_simulated``; a list
        is a mixture (each batch from one component at random; see
        ``unfolded_sbl.zoo.robust_simulator_params`` for the shipped models'
        distribution).  ``"head_models": "ensemble"`` projects the training
        data through the cached head-model ensemble of the forward's template
        (:func:`unfolded_sbl.head_models.load_head_ensemble`).
    prune_threshold : float | None
        Hard threshold on the source variances after each layer, relative to
        the largest (as in ``ClassicalCB``); None keeps every source.
    init_source_var, init_noise_var : float
        Starting variances in normalised units (see ``ClassicalCB``); the
        untrained network equals ``ClassicalCB`` started from the same.
    regime_check : bool
        Solve samples that lie outside the regime the corrections were trained
        for (noise-free, exactly low-rank or above about 50 dB SNR data, see
        ``unfolded_sbl.regime.regime_level_db``; or every sample when the
        source space's spacing lies outside those the corrections act on,
        ``unfolded_sbl.regime.acting_spacings``: e.g. ico4 for a model trained
        at ico3) with the classical solver (the same network without
        corrections).  ``classical_fallback_`` marks them after ``predict``.
    density_ceiling : float | None
        Part of the regime check: a sample whose learned estimate spreads over
        more than this fraction of the sources
        (``unfolded_sbl.regime.source_spread``, the participation ratio of
        its source variances) is solved again by the classical solver, and
        ``classical_fallback_`` marks it too.  Learned corrections help on
        focal estimates and lose a little on the densest ones (many patches,
        SNR below about 0 dB); ``load_pretrained`` sets each shipped model's
        value (``unfolded_sbl.zoo.DENSITY_CEILINGS``).  None (default): no check.
    dtype : {"float64", "float32"}
        Precision of the network.  float64 (default) keeps the solver exact at
        every SNR; float32 is faster but its round-off limits the
        resolvable noise level to about 1e-5 of the data power, so above about
        25 dB SNR it is regularised (it never fails: a jitter keeps every
        factorisation positive definite) and can lose to ``ClassicalCB``.
    device : str
        Torch device for training and inference: ``"cpu"`` (default),
        ``"cuda"`` or ``"cuda:N"`` when torch sees a GPU (a ValueError says so
        otherwise).  The network, the lead field and each batch stay on it
        across layers and steps; the simulator draws batches on the CPU (one
        copy to the device per step).
    checkpoint : str | None
        File for resumable training checkpoints.
    random_state : int | None
        Seed of the weight initialisation, the simulated batches and the
        validation set.
    verbose : bool
        Progress bars.
    attention_keys : int | None
        With ``correction="attention"``: each source attends to every source
        (None: the paper's global attention, O(M^2) per layer) or to the
        ``attention_keys`` sources that each layer's classical update makes
        largest in its sample (O(M k): trainable on a CPU at the MLP's budget).
    correction_units : int
        Hidden units of each layer's correction MLPs (source and noise branches;
        the attention correction's row-wise MLP).
    mixture_focus : float
        With a mixture of ``simulator_params``: 0 draws each batch from a component
        chosen evenly; above 0, after every epoch the components are drawn with
        probabilities ``~ exp(mixture_focus * validation ratio)`` (ratio to the
        classical solver, or to the starting network with
        ``select_best="relative"``), so that the steps go where the network is
        worst (group-DRO reweighting).
    data_streams : int
        ``fit_simulated`` draws each batch from this many independent simulator
        streams (seeded by ``random_state`` and the stream), as many ranks of a
        ``torchrun`` launch do, one stream each: one process with ``data_streams=k``
        and ``batch_size=k b`` trains as ``k`` ranks with ``batch_size=b``.  Launched
        by ``torchrun``, training is data-parallel (gradients averaged across ranks by
        ``DistributedDataParallel``; the joint phase only, ``progressive_steps=0``).

    Attributes
    ----------
    network_ : UnfoldedChampagne
    history_ : list of dict
        One record per progressive layer (``phase="progressive"``, ``layer``,
        ``steps``, mean ``loss``) then per joint epoch (``phase="joint"``,
        ``epoch``, ``steps``, ``loss`` and the validation metrics ``val_rmse``,
        ``val_ratio`` (to the classical solver), ``val_f1``).
    source_var_, noise_var_ : ndarray
        Variances of the last ``predict``.
    train_spacing_ : float | None
        Source spacing (metres) the corrections were trained for.
    spacing_range_ : [float, float] | None
        (finest, coarsest) source spacing on which the corrections act, where the
        model records one (models for denser source spaces,
        ``unfolded_sbl.zoo.DENSER_REACH``); None: within
        ``unfolded_sbl.regime.SPACING_TOLERANCE`` of ``train_spacing_``.

    References
    ----------
    .. [1] D. Wipf and S. Nagarajan, "A unified Bayesian framework for MEG/EEG source
       imaging", NeuroImage 44(3), 2009.
    .. [2] C. Cai, A. Hashemi, M. Diwakar, S. Haufe, K. Sekihara and S. Nagarajan,
       "Robust estimation of noise for electromagnetic brain imaging with the
       Champagne algorithm", NeuroImage 225, 2021.
    .. [3] A. Hashemi, C. Cai, G. Kutyniok, K.-R. Müller, S. Nagarajan and S. Haufe,
       "Unification of sparse Bayesian learning algorithms for electromagnetic brain
       imaging with the majorization minimization framework", NeuroImage 239, 2021.
    .. [4] "Structure-Preserving Correction Learning for Sparse Bayesian Inference in
       Brain Source Imaging", preprint: the unfolded network and its corrections.

    Examples
    --------
    Untrained, the network is the classical solver at the same depth:

    >>> import numpy as np
    >>> import unfolded_sbl as us
    >>> fwd = us.load_forward()
    >>> data = us.simulate(fwd, 2, random_state=0)
    >>> net = us.UnfoldedSBLRegressor(fwd, n_layers=10, max_epochs=0).fit_simulated()
    >>> classical = us.ClassicalCB(fwd, n_iter=10).fit().predict(data.sensors)
    >>> bool(np.allclose(net.predict(data.sensors), classical, rtol=1e-5, atol=1e-15))
    True

    A shipped, trained model (verified against its model card):

    >>> deep = us.load_pretrained("deep-cb-joint", forward=fwd)
    >>> deep.predict(data.sensors).shape
    (2, 1284, 100)
    """

    def __init__(self, forward=None, correction="mlp", noise_correction="mlp",
                 learn_noise=True, n_layers=25, max_epochs=10, steps_per_epoch=50,
                 batch_size=32, progressive_steps=10, learning_rate=1e-3,
                 deep_supervision=0.3, loss="relative", select_best=False,
                 warm_start=False, n_val=128,
                 simulator_params=None,
                 prune_threshold=None, init_source_var=1.0, init_noise_var=0.1,
                 regime_check=True, density_ceiling=None, dtype="float64", device="cpu",
                 checkpoint=None, random_state=None, verbose=False, attention_keys=None,
                 correction_units=32, mixture_focus=0.0, data_streams=1):
        self.forward = forward
        self.data_streams = data_streams
        self.correction = correction
        self.noise_correction = noise_correction
        self.learn_noise = learn_noise
        self.n_layers = n_layers
        self.max_epochs = max_epochs
        self.steps_per_epoch = steps_per_epoch
        self.batch_size = batch_size
        self.progressive_steps = progressive_steps
        self.learning_rate = learning_rate
        self.deep_supervision = deep_supervision
        self.loss = loss
        self.select_best = select_best
        self.warm_start = warm_start
        self.n_val = n_val
        self.simulator_params = simulator_params
        self.prune_threshold = prune_threshold
        self.init_source_var = init_source_var
        self.init_noise_var = init_noise_var
        self.regime_check = regime_check
        self.density_ceiling = density_ceiling
        self.dtype = dtype
        self.device = device
        self.checkpoint = checkpoint
        self.random_state = random_state
        self.verbose = verbose
        self.attention_keys = attention_keys
        self.correction_units = correction_units
        self.mixture_focus = mixture_focus

    # -- set-up ------------------------------------------------------------------------
    def _check_params(self):
        check_positive_int(self.n_layers, "n_layers")
        check_positive_int(self.max_epochs, "max_epochs", minimum=0)
        check_positive_int(self.steps_per_epoch, "steps_per_epoch")
        check_positive_int(self.batch_size, "batch_size")
        check_positive_int(self.progressive_steps, "progressive_steps", minimum=0)
        if self.correction not in CORRECTIONS:
            raise ValueError(f"correction must be one of {CORRECTIONS}, got {self.correction!r}")
        if self.noise_correction not in NOISE_CORRECTIONS:
            raise ValueError(f"noise_correction must be one of {NOISE_CORRECTIONS}, "
                             f"got {self.noise_correction!r}")
        if self.dtype not in _DTYPES:
            raise ValueError(f"dtype must be one of {list(_DTYPES)}, got {self.dtype!r}")
        if self.attention_keys is not None:
            check_positive_int(self.attention_keys, "attention_keys")
        check_positive_int(self.correction_units, "correction_units")
        check_optional_fraction(self.density_ceiling, "density_ceiling")
        if not isinstance(self.mixture_focus, numbers.Real) or not self.mixture_focus >= 0:
            raise ValueError(f"mixture_focus must be a number >= 0, got {self.mixture_focus!r}")
        if self.loss not in LOSSES:
            raise ValueError(f"loss must be one of {LOSSES}, got {self.loss!r}")
        if self.select_best not in (True, False, "relative"):
            raise ValueError("select_best must be True, False or 'relative', got "
                             f"{self.select_best!r}")
        for name in ("learning_rate", "init_source_var", "init_noise_var"):
            value = getattr(self, name)
            if not isinstance(value, numbers.Real) or not value > 0:
                raise ValueError(f"{name} must be a positive number, got {value!r}")

    def _config(self):
        return {k: getattr(self, k) for k in _CONFIG_KEYS}

    def _build(self):
        self._check_params()
        self.device_ = check_device(self.device)
        if self.warm_start and hasattr(self, "network_"):
            self._fit_forward(None)
            self.torch_dtype_ = _DTYPES[self.dtype]
            self.network_.cast(self.torch_dtype_, self.device_)
            self.history_ = list(getattr(self, "history_", []))
            return self
        self._fit_forward(None)
        self.torch_dtype_ = _DTYPES[self.dtype]
        torch.manual_seed(0 if self.random_state is None else int(self.random_state))
        self.network_ = UnfoldedChampagne(n_sources=self.n_sources_,
                                          n_channels=self.n_features_in_,
                                          **self._config()).cast(self.torch_dtype_, self.device_)
        # the corrections are learned for this source spacing (see regime_check)
        self.train_spacing_ = source_spacing(self.forward_)
        self.spacing_range_ = None
        self.history_ = []
        return self

    def _geometry(self):
        """Network inputs besides the data and lead field: the mesh neighbourhoods
        of the graph correction (``{}`` for the other corrections)."""
        if self.correction != "graph":
            return {}
        index, weight, _ = mesh_neighbourhoods(self.forward_)
        return {"neighbours": (torch.as_tensor(index, device=self.device_),
                               self._tensor(weight))}

    def _simulator_components(self, overrides=None):
        """``simulator_params`` as a list of dicts (a mixture when a list is given)."""
        params = self.simulator_params or {}
        components = [dict(p) for p in params] if isinstance(params, (list, tuple)) else [
            dict(params)]
        return [{**c, **(overrides or {})} for c in components]

    def _validation_set(self, rng):
        """One fixed validation set per mixture component (the ``-perturbed`` template)."""
        if self.n_val == 0:
            return None
        val_forward = perturbed_variant(self.forward_) or self.forward_
        components = self._simulator_components()
        parts = []
        for params in components:
            params.pop("head_models", None)  # validation: the perturbed template itself
            data = Simulator(val_forward, random_state=rng, **params).draw(
                max(1, self.n_val // len(components)))
            parts.append(tuple(self._normalise(data.sensors, data.sources,
                                               None if self.learn_noise else data.noise_var)))
        return parts

    def _train(self, draw_batch, rng):
        settings = TrainSettings(
            max_epochs=self.max_epochs, steps_per_epoch=self.steps_per_epoch,
            progressive_steps=self.progressive_steps, batch_size=self.batch_size,
            learning_rate=self.learning_rate, deep_supervision=self.deep_supervision,
            loss=self.loss, select_best=self.select_best,
            mixture_focus=float(self.mixture_focus), checkpoint=self.checkpoint,
            verbose=self.verbose)
        validation = self._validation_set(rng) if self.max_epochs else None
        trainer = Trainer(self.network_, self._tensor(self.lead_field_), draw_batch,
                          validation, settings, random_state=self.random_state,
                          geometry=self._geometry())
        previous = list(self.history_) if self.warm_start else []
        self.history_ = previous + trainer.run()
        self.best_epoch_ = trainer.state.get("best_epoch")
        # validation before the joint phase, with select_best="relative"
        self.start_validation_ = trainer.state.get("start_validation")
        # training time summed over interrupted and resumed runs
        self.train_seconds_ = trainer.state.get("seconds", 0.0)
        self.network_.eval()
        return self

    # -- public ------------------------------------------------------------------------
    def fit(self, X, y, noise_var=None):
        """Train on sensor data ``X`` (n, N, T) and true sources ``y`` (n, M, T).

        ``noise_var`` (n, N) is required when ``learn_noise=False``.
        """
        self._build()
        Y, target, noise = self._normalise(X, check_finite_array(y, "y", ndim=3), noise_var)
        if target.shape[0] != Y.shape[0] or target.shape[2] != Y.shape[2] or (
                target.shape[1] != self.n_sources_):
            raise ValueError(f"y must have shape ({Y.shape[0]}, {self.n_sources_}, "
                             f"{Y.shape[2]}), got {tuple(target.shape)}")
        if not self.learn_noise and noise is None:
            raise ValueError("learn_noise=False needs noise_var of shape (n_samples, "
                             f"{self.n_features_in_}) in fit")
        rng = np.random.default_rng(self.random_state)

        def draw_batch(batch_size, batch_rng):
            idx = batch_rng.choice(len(Y), size=min(batch_size, len(Y)), replace=False)
            return Y[idx], target[idx], None if noise is None else noise[idx]

        return self._train(draw_batch, rng)

    def fit_simulated(self, **simulator_params):
        """Train on fresh simulated batches (nothing is materialised).

        Keyword arguments override ``simulator_params`` for this call.  With a
        list of ``simulator_params`` (a mixture), each batch comes from one
        component drawn at random.
        """
        rank, n_ranks = init_from_env(self.device)
        self._build()
        check_positive_int(self.data_streams, "data_streams")
        rng = np.random.default_rng(self.random_state)
        components = self._simulator_components(simulator_params)
        for params in components:
            if isinstance(params.get("head_models"), str):
                params["head_models"] = _ensemble_for(self.forward_, params["head_models"],
                                                      self.verbose)
        if n_ranks == 1 and self.data_streams == 1:
            # batches are built on the network's device (no host round trip)
            simulators = [Simulator(self.forward_, random_state=rng, device=self.device_,
                                    **params) for params in components]

            def draw_batch(batch_size, batch_rng, weights=None):
                simulator = simulators[batch_rng.choice(len(simulators), p=weights)]
                data = simulator.draw(batch_size)
                return tuple(self._normalise(data.sensors, data.sources,
                                             None if self.learn_noise else data.noise_var))
        else:
            draw_batch = self._stream_batches(components, [rank] if n_ranks > 1 else
                                              range(self.data_streams))
        return self._train(draw_batch, rng)

    def _stream_batches(self, components, streams):
        """``draw_batch`` over independent simulator streams, one per rank of a
        distributed run (``streams=[rank]``) or several in one process
        (``data_streams``), so that one process with ``data_streams=k`` and batch
        ``k b`` draws exactly the samples of ``k`` ranks with batch ``b`` each.

        Every batch reseeds stream ``s`` with ``(step seed, s, component)``, where the
        step seed comes from the trainer's generator (the same on every rank, and
        restored from a checkpoint): a resumed run draws the batches the uninterrupted
        run would have drawn, on every rank, without saving the streams' states."""
        if self.batch_size % len(streams):
            raise ValueError(f"batch_size ({self.batch_size}) must be a multiple of the "
                             f"data streams ({len(streams)})")
        simulators = {s: [Simulator(self.forward_, device=self.device_, random_state=0,
                                    **params) for params in components] for s in streams}

        def draw_batch(batch_size, batch_rng, weights=None):
            step = int(batch_rng.integers(2 ** 63))
            parts = []
            for s in streams:
                chooser = np.random.default_rng([step, s, len(components)])
                c = chooser.choice(len(components), p=weights)
                simulators[s][c].rng = np.random.default_rng([step, s, c])
                parts.append(simulators[s][c].draw(batch_size // len(streams)))
            join = (torch.cat if torch.is_tensor(parts[0].sensors) else np.concatenate)
            noise = None if self.learn_noise else join([p.noise_var for p in parts])
            return tuple(self._normalise(join([p.sensors for p in parts]),
                                         join([p.sources for p in parts]), noise))

        return draw_batch

    def _run(self, X, noise_var, **kwargs):
        if not hasattr(self, "network_"):
            from sklearn.exceptions import NotFittedError

            raise NotFittedError("call fit, fit_simulated or load first")
        Y, noise, safe, nonzero = self._network_inputs(X, noise_var, self.learn_noise)
        data, expand = self._on_row_space(Y)
        kwargs.update(self._geometry())

        def run(rows, classical, merged):
            parts = [(chunk, classical) for chunk in _chunks(rows, PREDICT_BATCH_SIZE)]
            return self._solve(data, noise, expand, parts, kwargs, merged=merged)

        out = self._with_regime_check(data, run, lambda merged: merged["source_var"])
        return out, safe, nonzero

    def _solve(self, data, noise, expand, parts, kwargs, merged=None):
        """Network outputs of every sample of ``data`` that ``parts`` (boolean row
        masks, each with its ``classical`` flag) cover, written into ``merged``."""
        # samples left to the classical updates run in float64 whatever ``dtype``, as
        # ClassicalCB's reference path does: the classical iterations drift in float32
        # at high SNR, where the regime check sends data
        solvers = {self.torch_dtype_: (self.network_, self._tensor(self.lead_field_))}
        with torch.no_grad():
            for rows, classical in parts:
                dtype = torch.float64 if classical else self.torch_dtype_
                if dtype not in solvers:  # the solver only (no corrections run), once
                    solvers[dtype] = (copy.deepcopy(self.network_).cast(
                        dtype, getattr(self, "device_", None)),
                        self._tensor(self.lead_field_, dtype))
                network, lead_field = solvers[dtype]
                part_noise = None if noise is None else self._tensor(noise[rows], dtype)
                out = network(self._tensor(data[rows], dtype), lead_field, part_noise,
                              classical=classical, **kwargs)
                if dtype != self.torch_dtype_:
                    out = _cast(out, self.torch_dtype_)
                out = _expanded(out, partial(expand, rows=rows))
                if merged is None and len(parts) == 1 and rows.all():
                    return out  # one part holds every sample: its outputs as they are
                merged = _merge_into(merged, rows, out, len(data))
        return merged

    def predict(self, X, noise_var=None):
        """Posterior-mean sources, shape (n_samples, n_sources, n_times).

        The samples run through the network :data:`PREDICT_BATCH_SIZE` at a time.
        """
        out, safe, nonzero = self._run(X, noise_var)
        sources, self.source_var_, self.noise_var_ = self._physical(
            *(out[k].double().cpu().numpy() for k in ("sources", "source_var", "noise_var")),
            safe, nonzero)
        return self._squeeze(sources, X)

    def predict_trajectory(self, X, noise_var=None):
        """Per-layer states for interpretability plots (paper figures 4 and 8).

        Returns
        -------
        layers : list of dict
            For each layer: ``sources`` (n, M, T), ``source_var`` (n, M),
            ``noise_var`` (n, N) in physical units, and the corrections
            ``source_correction`` (n, M) / ``noise_correction`` (n, N) added to
            the log-variance updates (None where a layer has none).
        """
        out, safe, nonzero = self._run(X, noise_var, trajectory=True)
        layers = []
        for state in out["trajectory"]:
            sources, source_var, noise = self._physical(
                *(state[k].double().cpu().numpy() for k in ("sources", "source_var", "noise_var")),
                safe, nonzero)
            layers.append({
                "sources": sources, "source_var": source_var, "noise_var": noise,
                "source_correction": None if state["source_correction"] is None
                else state["source_correction"].double().cpu().numpy(),
                "noise_correction": None if state["noise_correction"] is None
                else state["noise_correction"].double().cpu().numpy()})
        return layers

    # -- persistence -------------------------------------------------------------------
    def save(self, path):
        """Write weights, the config that rebuilds them and a version field."""
        if not hasattr(self, "network_"):
            raise ValueError("nothing to save: the estimator is not fitted")
        torch.save({"format": MODEL_FORMAT, "format_version": MODEL_FORMAT_VERSION,
                    "package_version": __version__, "config": self._config(),
                    "dtype": self.dtype, "n_channels": self.n_features_in_,
                    "n_sources": self.n_sources_,
                    # only shipped templates can be found again by name
                    "forward_name": (self.forward_.name if self.forward_.name in
                                     list_forwards() else None),
                    "history": self.history_,
                    "train_spacing": getattr(self, "train_spacing_", None),
                    "spacing_range": getattr(self, "spacing_range_", None),
                    # read back by load(density_ceiling="auto")
                    "density_ceiling": self.density_ceiling,
                    "state_dict": {k: v.detach().cpu() for k, v in
                                   self.network_.state_dict().items()}}, path)

    @classmethod
    def load(cls, path, forward=None, dtype=None, device="cpu", regime_check=True,
             density_ceiling="auto"):
        """Load a model written by :meth:`save`.

        ``forward`` (default: the template it was trained on) may be another cap
        or source space for the MLP and attention variants; ``dtype`` overrides
        the precision it was saved with; ``device`` is where it runs;
        ``regime_check`` and ``density_ceiling`` as in the constructor, except that
        ``density_ceiling="auto"`` (default) takes the value saved with the model
        (the shipped models': :data:`unfolded_sbl.zoo.DENSITY_CEILINGS`; None for
        files saved before it was recorded).
        """
        try:
            blob = torch.load(path, map_location="cpu", weights_only=True)
        except FileNotFoundError:
            raise
        except Exception as err:  # torch raises many types for damaged files
            raise ValueError(f"cannot read model file {path}: it is corrupted or not a "
                             f"model saved by unfolded_sbl ({type(err).__name__}: "
                             f"{str(err)[:200]})") from None
        if not isinstance(blob, dict) or blob.get("format") != MODEL_FORMAT:
            raise ValueError(f"{path} is not an unfolded_sbl model file")
        if blob.get("format_version") != MODEL_FORMAT_VERSION:
            raise ValueError(f"{path} has model format version {blob.get('format_version')}; "
                             f"this unfolded_sbl reads version {MODEL_FORMAT_VERSION}")
        config = blob["config"]
        if isinstance(density_ceiling, str) and density_ceiling == "auto":
            density_ceiling = blob.get("density_ceiling")
        if forward is None:
            forward = blob.get("forward_name")
            if forward is None:
                raise ValueError("the model was trained on a custom forward model: pass "
                                 "forward=")
        est = cls(forward=forward, max_epochs=0, dtype=dtype or blob["dtype"], device=device,
                  regime_check=regime_check, density_ceiling=density_ceiling, **config)
        est._check_params()
        est.device_ = check_device(device)
        est._fit_forward(None)
        fwd = est.forward_
        if "bias" in (config["correction"], config["noise_correction"]) and (
                fwd.n_sources != blob["n_sources"] or fwd.n_channels != blob["n_channels"]):
            raise ValueError(
                f"this bias model is tied to {blob['n_channels']} channels x "
                f"{blob['n_sources']} sources; the forward model has {fwd.n_channels} x "
                f"{fwd.n_sources}")
        est.torch_dtype_ = _DTYPES[est.dtype]
        est.network_ = UnfoldedChampagne(n_sources=blob["n_sources"],
                                         n_channels=blob["n_channels"], **config)
        # in the stored precision first, so that loading copies weights exactly
        stored = next(iter(blob["state_dict"].values()), None)
        if stored is not None:
            est.network_.to(stored.dtype)
        try:
            est.network_.load_state_dict(upgrade_state_dict(blob["state_dict"]))
        except RuntimeError as err:
            raise ValueError(f"{path}: weights do not match the stored config: {err}") from None
        est.network_.cast(est.torch_dtype_, est.device_).eval()
        est.history_ = blob.get("history", [])
        est.train_spacing_ = blob.get("train_spacing")
        est.spacing_range_ = check_spacing_range(blob.get("spacing_range"),
                                                 f"the spacing_range recorded in {path}")
        if est.train_spacing_ is None and blob.get("forward_name"):
            # files written before the field: the spacing of the training template
            est.train_spacing_ = source_spacing(load_forward(blob["forward_name"]))
        return est


