"""OnnxSBLRegressor: exported unfolded networks run by onnxruntime, as an sklearn predictor."""

from __future__ import annotations

import json
import logging
import os

import numpy as np
import torch

from ._base import _plain_zeros
from ._network_base import _NetworkEstimator
from ._validation import (
    check_optional_fraction,
    check_positive_int,
    check_spacing_range,
)
from .estimators import ClassicalCB
from .forward import mesh_neighbourhoods

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


def _session(path, providers, threads):
    """An onnxruntime session with :func:`_session_options`, CUDA first when
    available; reports which provider really runs."""
    import onnxruntime as ort

    options = _session_options(threads)
    available = ort.get_available_providers()
    wanted = providers or [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider")
                           if p in available]
    # Probing CUDA on a machine without its libraries prints a red error even though
    # the session falls back to the CPU: silence it during creation, report below.
    ort.set_default_logger_severity(4)
    try:
        session = ort.InferenceSession(str(path), sess_options=options, providers=wanted)
    except Exception as err:  # onnxruntime raises its own exception types
        raise ValueError(f"cannot load ONNX model {path}: it is corrupted or not an ONNX "
                         f"model ({type(err).__name__}: {str(err)[:200]})") from None
    finally:
        ort.set_default_logger_severity(2)
    # onnxruntime-gpu lists CUDA even without a usable GPU and then silently runs
    # on the CPU: report what the session really uses.
    used = session.get_providers()[0]
    if "CUDAExecutionProvider" in wanted and used != "CUDAExecutionProvider":
        logger.info("onnxruntime: CUDA unavailable here, running on %s", used)
    else:
        logger.info("onnxruntime: running on %s", used)
    return session


def _as_float64(array):
    """onnxruntime's output in float64: itself, or (float32 graphs) widened by torch,
    whose allocator gives plain pages (see :func:`unfolded_sbl._base._plain_zeros`)."""
    return torch.from_numpy(array).to(torch.float64).numpy()


class OnnxSBLRegressor(_NetworkEstimator):
    """Predict sources with an exported unfolded network (onnxruntime).

    Parameters
    ----------
    path : str | Path
        ONNX file written by :func:`unfolded_sbl.export_onnx`.
    forward : str | ForwardModel | mne.Forward | None
        Forward model to run on (any cap or source space for MLP and attention
        models; bias models only on the sizes they were trained for).
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
        Solve samples outside the regime the corrections were trained for with
        :class:`ClassicalCB` at the network's depth (as
        :class:`UnfoldedSBLRegressor` does); ``classical_fallback_`` marks them.
    density_ceiling : "auto" | float | None
        As in :class:`UnfoldedSBLRegressor`: samples whose learned estimate
        spreads over more than this fraction of the sources are solved again by
        the classical solver.  ``"auto"`` (default) takes the value recorded in
        the file: the ``density_ceiling`` of the exported estimator, which for the
        shipped models is :data:`unfolded_sbl.zoo.DENSITY_CEILINGS` (None in
        files exported before it was recorded).

    Attributes
    ----------
    provider_ : str
        The execution provider actually used.
    metadata_ : dict
        Model configuration stored in the file.
    density_ceiling_ : float | None
        The density ceiling in use (``density_ceiling`` resolved).

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
        """Load the session and the forward model (``X`` optional, ``y`` ignored)."""
        check_positive_int(self.batch_size, "batch_size")
        auto = isinstance(self.density_ceiling, str) and self.density_ceiling == "auto"
        if not auto:
            check_optional_fraction(self.density_ceiling, "density_ceiling")
        if not os.path.exists(self.path):
            raise FileNotFoundError(f"no ONNX model at {self.path}")
        self._fit_forward(X)
        self.session_ = _session(self.path, self.providers, self.intra_op_num_threads)
        self.provider_ = self.session_.get_providers()[0]
        meta = self.session_.get_modelmeta().custom_metadata_map.get("unfolded_sbl")
        if meta is None:
            raise ValueError(f"{self.path} is not an ONNX model exported by unfolded_sbl")
        self.metadata_ = json.loads(meta)
        if self.metadata_["fixed_sizes"] and (
                self.metadata_["n_channels"] != self.n_features_in_
                or self.metadata_["n_sources"] != self.n_sources_):
            raise ValueError(
                f"this bias model is tied to {self.metadata_['n_channels']} channels x "
                f"{self.metadata_['n_sources']} sources; the forward model has "
                f"{self.n_features_in_} x {self.n_sources_}")
        self.density_ceiling_ = check_optional_fraction(
            self.metadata_.get("density_ceiling") if auto else self.density_ceiling,
            f"the density_ceiling recorded in {self.path}")
        self.learn_noise_ = self.metadata_["config"]["learn_noise"]
        self.train_spacing_ = self.metadata_.get("train_spacing")
        self.spacing_range_ = check_spacing_range(
            self.metadata_.get("spacing_range"), f"the spacing_range recorded in {self.path}")
        # files exported before float64 graphs carry no dtype: they are float32
        self.input_dtype_ = np.dtype(self.metadata_.get("dtype", "float32"))
        config = self.metadata_["config"]
        self.classical_ = ClassicalCB(
            self.forward_, noise="learn" if self.learn_noise_ else "known",
            n_iter=config["n_layers"], init_source_var=config["init_source_var"],
            init_noise_var=config["init_noise_var"],
            prune_threshold=config["prune_threshold"]).fit()
        return self

    def predict(self, X, noise_var=None):
        """Posterior-mean sources, shape (n_samples, n_sources, n_times)."""
        if not hasattr(self, "session_"):
            from sklearn.exceptions import NotFittedError

            raise NotFittedError(
                "this OnnxSBLRegressor is not fitted yet: call fit() first (it opens the "
                "ONNX session and loads the forward model; no training happens), or use "
                "us.load_pretrained(name, backend='onnx'), which returns a fitted one")
        Y, noise, safe, nonzero = self._network_inputs(X, noise_var, self.learn_noise_)
        data, expand = self._on_row_space(Y)
        X3 = np.asarray(X, dtype=float).reshape(Y.shape)  # (n, N): one time sample each

        def run(rows, classical, merged):
            if classical:
                kwargs = {} if noise_var is None else {"noise_var": np.asarray(noise_var)[rows]}
                part = (self.classical_.predict(X3[rows], **kwargs),
                        self.classical_.source_var_, self.classical_.noise_var_)
            else:
                index = np.flatnonzero(rows)
                part = (self._predict_network(X3[rows], data[rows], expand, index,
                                              None if noise is None else noise[rows],
                                              safe[rows], nonzero[rows]),
                        self.source_var_, self.noise_var_)
            if merged is None and rows.all():
                return part  # every sample in one part: its outputs as they are
            if merged is None:
                merged = (_plain_zeros(Y.shape[:1] + part[0].shape[1:]),
                          np.zeros((len(Y), self.n_sources_)),
                          np.zeros((len(Y), self.n_features_in_)))
            for whole, values in zip(merged, part):
                whole[rows] = values
            return merged

        sources, self.source_var_, self.noise_var_ = self._with_regime_check(
            data, run, lambda merged: merged[1])
        return self._squeeze(sources, X)

    def _predict_network(self, X, data, expand, rows, noise, safe, nonzero):
        """The graph on ``data``: the data of the samples ``rows`` (indices into the
        batch that ``expand`` was made for) or their row space, with ``expand``
        mapping the estimate back (:meth:`_on_row_space`).  The graph runs
        ``batch_size`` samples at a time and each part is mapped back into the
        output as it comes, so that one part's outputs are alive at a time."""
        dtype = self.input_dtype_
        fixed = {"lead_field": self.lead_field_.astype(dtype), **self._geometry_feeds()}
        sources, variances = None, []
        for start in range(0, len(data), self.batch_size):
            sl = slice(start, start + self.batch_size)
            feeds = {"sensors": data[sl].astype(dtype), **fixed}
            if noise is not None:
                feeds["noise_var_in"] = noise[sl].astype(dtype)
            outputs = self.session_.run(None, feeds)
            part_sources, *part_variances = (_as_float64(o) for o in outputs)
            part_sources = expand(part_sources, rows=rows[sl])
            if len(data) <= self.batch_size:  # one part: its output as it is
                sources = part_sources
            else:
                sources = (_plain_zeros((len(data),) + part_sources.shape[1:])
                           if sources is None else sources)
                sources[sl] = part_sources
            variances.append(part_variances)
        source_var, noise_var = (np.concatenate(v) for v in zip(*variances))
        sources, self.source_var_, self.noise_var_ = self._physical(
            sources, source_var, noise_var, safe, nonzero)
        return self._squeeze(sources, X)

    def _geometry_feeds(self):
        """Mesh neighbourhoods for graph models (inputs named ``neighbour_*``)."""
        names = {i.name for i in self.session_.get_inputs()}
        if "neighbour_index" not in names:
            return {}
        index, weight, _ = mesh_neighbourhoods(self.forward_)
        return {"neighbour_index": index, "neighbour_weight": weight.astype(self.input_dtype_)}

    def __getstate__(self):
        state = self.__dict__.copy()
        state.pop("session_", None)  # onnxruntime sessions do not pickle; rebuilt on load
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        if "provider_" in state:
            self.session_ = _session(self.path, self.providers, self.intra_op_num_threads)
