"""OnnxSBLRegressor: exported unfolded networks run by onnxruntime, as an sklearn predictor."""

from __future__ import annotations

import json
import logging
import os

import numpy as np

from ._base import _plain_zeros
from ._network_base import _NetworkEstimator
from ._validation import (
    check_noise_var,
    check_optional_fraction,
    check_positive_int,
    check_spacing_range,
)
from .forward import mesh_neighbourhoods, source_spacing

logger = logging.getLogger("unfolded_sbl")


#: onnxruntime's session option that parks its threads when a call returns.
STOP_SPINNING = "session.force_spinning_stop"


def _session_options(threads=None, park_threads=True):
    """The library's onnxruntime session options, kept on purpose.

    * Full graph optimisation (``ORT_ENABLE_ALL``: the exported graphs' constant
      folding and GEMM fusions), the CPU memory arena (the per-layer N x N buffers
      are reused across calls) and sequential execution (the layers are a chain).
    * Memory-pattern reuse off (``enable_mem_reuse = False``): with it on,
      onnxruntime's allocation planner spends many seconds planning the buffer
      sharing of the thousands of nodes of a 25-layer network, paid by every
      session that opens a model; the arena still recycles the buffers
      (``python -m benchmarks.bench_onnx``, session-options table).
    * Threads that stop spinning when a call returns
      (``session.force_spinning_stop``).  onnxruntime's intra-op threads otherwise
      keep spinning after every ``run`` and take the cores from whatever runs
      next: this wrapper's own work around the graph and the user's code after
      ``predict``.  They still spin during a call, where it speeds up the dispatch
      of the graph's many small nodes (``python -m benchmarks.bench_onnx``,
      session-options table).
    * onnxruntime's thread count unless ``threads`` is given.

    ``park_threads=False`` leaves onnxruntime's default spinning after a call (for
    ``benchmarks.bench_onnx``'s comparison; setting the entry twice makes onnxruntime
    log a warning).
    """
    import onnxruntime as ort

    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = int(threads)
    options.enable_mem_reuse = False
    if park_threads:
        options.add_session_config_entry(STOP_SPINNING, "1")
    options.log_severity_level = 3  # the CUDA probe on CPU-only machines is noisy
    return options


def _session(model, providers, threads, path=None):
    """An onnxruntime session on ``model`` (a file or serialised bytes) with
    :func:`_session_options`, CUDA first when available; reports which provider
    really runs."""
    import onnxruntime as ort

    options = _session_options(threads)
    available = ort.get_available_providers()
    wanted = providers or [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider")
                           if p in available]
    # Probing CUDA on a machine without its libraries prints a red error even though
    # the session falls back to the CPU: silence it during creation, report below.
    ort.set_default_logger_severity(4)
    try:
        session = ort.InferenceSession(model if isinstance(model, bytes) else str(model),
                                       sess_options=options, providers=wanted)
    except Exception as err:  # onnxruntime raises its own exception types
        raise ValueError(f"cannot load ONNX model {path or model}: it is corrupted or not an "
                         f"ONNX model ({type(err).__name__}: {str(err)[:200]})") from None
    finally:
        ort.set_default_logger_severity(2)
    # onnxruntime-gpu lists CUDA even without a usable GPU and then silently runs
    # on the CPU: report what the session really uses.
    used = session.get_providers()[0]
    if "CUDAExecutionProvider" in wanted and used != "CUDAExecutionProvider":
        logger.info("onnxruntime: CUDA unavailable here")
    return session


class _SessionCache:
    """The last few sessions opened, by file and settings: opening a learned model's
    graph takes seconds, and the same file is opened again for each forward model
    (a live stream's channel set that changes, a search's folds).  onnxruntime
    sessions may be shared: ``run`` is thread-safe."""

    def __init__(self, size=8):
        self.size, self.sessions = size, {}

    def get(self, key):
        session = self.sessions.pop(key, None)
        if session is not None:
            self.sessions[key] = session  # most recently used last
        return session

    def put(self, key, session):
        self.sessions[key] = session
        while len(self.sessions) > self.size:
            self.sessions.pop(next(iter(self.sessions)))
        return session


_SESSIONS = _SessionCache()


class OnnxSBLRegressor(_NetworkEstimator):
    """Predict sources with an exported solver (onnxruntime).

    A thin wrapper over the file's contract (:mod:`unfolded_sbl.export`): the
    file takes volts and returns A m, and runs the regime check and its
    classical fallback itself; this class validates the input, feeds the
    forward model, batches, and runs long windows on their row space (the same
    estimate, fewer columns).

    Parameters
    ----------
    path : str | Path
        ONNX file written by :func:`unfolded_sbl.export_onnx` (a learned model,
        ``ClassicalCB`` or ``SLORETA``).
    forward : str | ForwardModel | mne.Forward | None
        Forward model to run on (any cap or source space for MLP and attention
        models; bias models only on the sizes they were trained for; files with
        an embedded forward model only on theirs).
    providers : list of str | None
        onnxruntime execution providers; default CUDA when available, else CPU.
    batch_size : int
        Samples per onnxruntime call.  The graph solves batches of 8 or more with
        one GEMM against the lead field's pair products and smaller ones per
        sample (``unfolded_sbl.export``); from 8 up the time per sample is
        nearly flat (``python -m benchmarks.bench_onnx``), so the default 64
        bounds memory without costing speed.
    intra_op_num_threads : int | None
        onnxruntime threads (None: its default).
    regime_check : bool
        Let the file solve samples outside the regime the corrections were
        trained for with the classical updates at the network's depth (as
        :class:`UnfoldedSBLRegressor` does); ``classical_fallback_`` marks them.
    density_ceiling : "auto" | float | None
        As in :class:`UnfoldedSBLRegressor`: samples whose learned estimate
        spreads over more than this fraction of the sources are solved again by
        the classical updates.  ``"auto"`` (default) keeps the file's setting
        (that of the exported estimator; for the shipped models
        :data:`unfolded_sbl.zoo.DENSITY_CEILINGS`).

    Attributes
    ----------
    provider_ : str
        The execution provider actually used.
    contract_ : dict
        The file's contract (:func:`unfolded_sbl.export.read_contract`).
    metadata_ : dict
        Training configuration stored in a learned model's file (else empty).
    density_ceiling_ : float | None
        The density ceiling in use (``density_ceiling`` resolved).
    solver_dtype_ : numpy.dtype
        The dtype the file's solver runs in (its inputs and outputs are float64).
    classical_fallback_ : ndarray of bool, shape (n_samples,)
        Samples of the last ``predict`` that the classical updates solved.

    Examples
    --------
    >>> import unfolded_sbl as us
    >>> path = us.pretrained_path("deep-cb-joint", "onnx")   # the installed file
    >>> est = us.OnnxSBLRegressor(path, forward="biosemi64-ico3").fit()
    >>> data = us.simulate("biosemi64-ico3", 2, random_state=0)
    >>> est.predict(data.sensors).shape
    (2, 1284, 100)
    >>> est.provider_ in ("CPUExecutionProvider", "CUDAExecutionProvider")
    True
    """

    def __init__(self, path, forward=None, providers=None, batch_size=64,
                 intra_op_num_threads=None, regime_check=True, density_ceiling="auto"):
        self.path = path
        self.forward = forward
        self.providers = providers
        self.batch_size = batch_size
        self.intra_op_num_threads = intra_op_num_threads
        self.regime_check = regime_check
        self.density_ceiling = density_ceiling

    def fit(self, X=None, y=None):
        """Open the file and load the forward model (``X`` optional, ``y`` ignored)."""
        import onnx

        from ._export_compose import set_constants
        from .export import read_contract

        check_positive_int(self.batch_size, "batch_size")
        auto = isinstance(self.density_ceiling, str) and self.density_ceiling == "auto"
        if not auto:
            check_optional_fraction(self.density_ceiling, "density_ceiling")
        if not os.path.exists(self.path):
            raise FileNotFoundError(f"no ONNX model at {self.path}")
        self._fit_forward(X)
        try:
            model = onnx.load(str(self.path))
        except Exception as err:  # protobuf raises its own exception types
            raise ValueError(f"cannot load ONNX model {self.path}: it is corrupted or not an "
                             f"ONNX model ({type(err).__name__}: {str(err)[:200]})") from None
        self.contract_ = read_contract(model)
        meta = {p.key: p.value for p in model.metadata_props}
        self.metadata_ = json.loads(meta.get("unfolded_sbl", "{}"))
        self._check_sizes()
        self.train_spacing_ = self.metadata_.get("train_spacing")
        self.spacing_range_ = check_spacing_range(
            self.metadata_.get("spacing_range"), f"the spacing_range recorded in {self.path}")
        settings = self.contract_.get("settings", {})
        recorded = settings.get("density_ceiling")
        recorded = None if recorded in (None, "inf") else recorded
        self.density_ceiling_ = check_optional_fraction(
            recorded if auto else self.density_ceiling,
            f"the density_ceiling recorded in {self.path}")
        values = self._settings_values()
        if values:
            set_constants(model, values)
            if self.regime_check:
                self._other_resolution()  # logs once when the corrections stand aside
        key = (os.path.abspath(self.path), os.path.getmtime(self.path),
               tuple((k, v.item()) for k, v in sorted(values.items())),
               tuple(self.providers or ()), self.intra_op_num_threads)
        self.session_ = _SESSIONS.get(key) or _SESSIONS.put(key, _session(
            model.SerializeToString(), self.providers, self.intra_op_num_threads,
            path=self.path))
        self.provider_ = self.session_.get_providers()[0]
        logger.info("onnxruntime: running on %s", self.provider_)  # new or cached session
        inputs = {i.name: i for i in self.session_.get_inputs()}
        self.learn_noise_ = "noise_var_in" not in inputs
        self.outputs_ = [o.name for o in self.session_.get_outputs()]
        # the solver's dtype inside the file (its inputs and outputs are float64)
        self.solver_dtype_ = np.dtype(self.contract_["params"].get("dtype", "float64"))
        return self

    def _settings_values(self):
        """The file's regime-check constants as this estimator sets them (its
        ``regime_check``, resolved density ceiling and forward model's spacing);
        empty for files without a regime check."""
        settings = self.contract_.get("settings", {})
        if not settings:
            return {}
        values = {"regime_check": np.array(bool(self.regime_check)),
                  "density_ceiling": np.array(np.inf if self.density_ceiling_ is None
                                              else float(self.density_ceiling_))}
        if "source_spacing" in settings:
            values["source_spacing"] = np.array(float(source_spacing(self.forward_)))
        return values

    def _forward_feeds(self):
        """The inputs that carry the forward model: none for a file that embeds it,
        else the lead field (V / (A m)) and a graph model's neighbourhoods."""
        if self.contract_["forward"]["embedded"]:
            return {}
        return {"lead_field": self.forward_.lead_field, **self._geometry_feeds()}

    def _check_sizes(self):
        """Files tied to a cap (an embedded forward model, bias corrections) run on
        that cap only."""
        fixed = self.contract_["forward"]
        if fixed["embedded"]:
            if (fixed["n_channels"], fixed["n_sources"]) != (self.n_features_in_,
                                                             self.n_sources_) or (
                    fixed["ch_names"] != list(self.forward_.ch_names)):
                raise ValueError(
                    f"{self.path} embeds the forward model {fixed['name']!r} "
                    f"({fixed['n_channels']} channels x {fixed['n_sources']} sources); "
                    f"forward= is {self.forward_.name!r} ({self.n_features_in_} x "
                    f"{self.n_sources_}): pass forward={fixed['name']!r} or export the model "
                    "without embed_forward")
        elif self.metadata_.get("fixed_sizes") and (
                self.metadata_["n_channels"] != self.n_features_in_
                or self.metadata_["n_sources"] != self.n_sources_):
            raise ValueError(
                f"this bias model is tied to {self.metadata_['n_channels']} channels x "
                f"{self.metadata_['n_sources']} sources; the forward model has "
                f"{self.n_features_in_} x {self.n_sources_}")

    def predict(self, X, noise_var=None):
        """Posterior-mean sources, shape (n_samples, n_sources, n_times)."""
        if not hasattr(self, "session_"):
            from sklearn.exceptions import NotFittedError

            raise NotFittedError(
                "this OnnxSBLRegressor is not fitted yet: call fit() first (it opens the "
                "ONNX session and loads the forward model; no training happens), or use "
                "us.load_pretrained(name, backend='onnx'), which returns a fitted one")
        Y, _ = self._prepare(X)  # validated and referenced; the graph scales
        if not self.learn_noise_:
            noise_var = check_noise_var(noise_var, Y.shape[:2])
        elif noise_var is not None:
            raise ValueError("noise_var is only used by known-noise models")
        data, expand = self._on_row_space(Y)
        fixed = self._forward_feeds()
        sources, parts = None, []
        for start in range(0, len(data), self.batch_size):
            rows = slice(start, start + self.batch_size)
            feeds = {"sensors": data[rows], **fixed}
            if noise_var is not None:
                feeds["noise_var_in"] = noise_var[rows]
            outputs = dict(zip(self.outputs_, self.session_.run(None, feeds)))
            part = expand(outputs.pop("sources"), rows=np.arange(len(data))[rows])
            if len(data) <= self.batch_size:  # one part: its output as it is
                sources = part
            else:
                sources = (_plain_zeros((len(data),) + part.shape[1:]) if sources is None
                           else sources)
                sources[rows] = part
            parts.append(outputs)
        if "source_var" in self.outputs_:
            self.source_var_, self.noise_var_ = (
                np.concatenate([p[k] for p in parts])
                for k in ("source_var", "noise_var"))
            self.classical_fallback_ = np.concatenate([p["classical_fallback"] for p in parts])
        return self._squeeze(sources, X)

    def _geometry_feeds(self):
        """Mesh neighbourhoods for graph models (inputs named ``neighbour_*``)."""
        names = {i.name for i in self.session_.get_inputs()}
        if "neighbour_index" not in names:
            return {}
        index, weight, _ = mesh_neighbourhoods(self.forward_)
        return {"neighbour_index": index, "neighbour_weight": weight.astype(np.float64)}

    def __getstate__(self):
        state = self.__dict__.copy()
        state.pop("session_", None)  # onnxruntime sessions do not pickle; rebuilt on load
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        if "provider_" in state:
            self.fit()
