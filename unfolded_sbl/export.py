"""ONNX export: every file is the solver, volts in and A m out.

A file takes data as users hold them and returns physical units (the contract,
:func:`contract`, is stored in the file as JSON metadata):

* inputs: ``sensors`` (batch, channels, times) in volts, any reference; the
  lead field (channels, sources) in V/(A m) unless it is embedded
  (``embed_forward=True``); known-noise models also ``noise_var_in`` (batch,
  channels) in V^2; graph models' mesh neighbourhoods unless embedded;
* outputs: ``sources`` (batch, sources, times) in A m, ``source_var`` in
  (A m)^2, ``noise_var`` in V^2, and ``classical_fallback`` (batch,), the
  samples the classical updates solved.

The average reference, the scaling, and for learned models the regime check
(:mod:`unfolded_sbl.regime`) with its classical fallback all run inside the
graph (a channel holding a non-finite value in a sample counts as flat, zero, in
that sample, so the answer is finite), so plain onnxruntime gives what
:class:`~unfolded_sbl.OnnxSBLRegressor` gives.  The regime check's settings are
constants of a learned file, listed in its contract's ``settings``:
``regime_check`` (bool), ``density_ceiling`` (``inf`` for none) and, when the
lead field is an input, ``source_spacing`` (metres: the source space is taken to
be the trained one).
:class:`~unfolded_sbl.OnnxSBLRegressor` sets them from its parameters and
forward model before it opens the file.

Standard ONNX has no matrix inverse or Cholesky, and no torch solver exports
to standard ops.  The graphs therefore use onnxruntime's contrib operator
``com.microsoft::Inverse`` (CPU and CUDA kernels, and in onnxruntime-node and
onnxruntime-web) for the N x N model covariance and the regime check's small
matrices: accurate (float32 floor) and fast, where standard-op fallbacks were
either inaccurate (Newton-Schulz) or slow (Gauss-Jordan in a Loop).
"""

from __future__ import annotations

import copy
import json

import numpy as np
import torch

from . import __version__
from ._base import _DTYPES
from ._export_graphs import SLORETAGraph, SolverGraph

OPSET = 17
#: Version of the contract (inputs in volts, outputs in A m, fallback inside).
CONTRACT_VERSION = 2
OUTPUTS = ("sources", "source_var", "noise_var", "classical_fallback")


def export_onnx(estimator, path, n_channels=None, n_sources=None, n_times=20,
                embed_forward=False, name=None, provenance=None):
    """Write a fitted estimator as one self-contained ONNX file.

    The file takes ``sensors`` in volts (any reference) and returns sources in
    A m; the reference, the scaling and, for learned models, the regime check
    with its classical fallback run inside it, so plain onnxruntime gives what
    :class:`~unfolded_sbl.OnnxSBLRegressor` gives (see :mod:`unfolded_sbl.export`
    and the contract stored in the file, :func:`read_contract`).

    Parameters
    ----------
    estimator : UnfoldedSBLRegressor | ClassicalCB | SLORETA
        Fitted (or loaded) estimator, whose solver is exported in its ``dtype``
        (a network in float32 keeps its N x N factorisation, the regime check and
        the classical fallback in float64).  Inputs and outputs are float64.  ``ClassicalCB`` needs
        ``noise="learn"`` or ``"known"`` and ``tol=0`` (a fixed depth).
    path : str | Path
    n_channels, n_sources, n_times : int | None
        Sizes of the example inputs used to trace a network (default: the
        estimator's forward model); the axes stay dynamic unless embedded.
    embed_forward : bool
        The estimator's lead field (and a graph model's mesh neighbourhoods) are
        constants of the file, whose only input is then ``sensors`` (and
        ``noise_var_in`` for known noise): one file for one cap.
    name : str | None
        Model name recorded in the contract (e.g. a shipped model's).
    provenance : dict | None
        JSON-able facts recorded in the contract's ``provenance`` (the shipped
        models record their weights' sha256, which their cards list too).

    Returns
    -------
    path : str

    Examples
    --------
    >>> import os, tempfile, onnxruntime, unfolded_sbl as us
    >>> est = us.ClassicalCB(forward="biosemi64-ico3", n_iter=5, tol=0).fit()
    >>> folder = tempfile.mkdtemp()
    >>> path = us.export_onnx(est, os.path.join(folder, "cb.onnx"), embed_forward=True)
    >>> data = us.simulate("biosemi64-ico3", 1, random_state=0)
    >>> session = onnxruntime.InferenceSession(path)
    >>> sources = session.run(["sources"], {"sensors": data.sensors})[0]
    >>> bool(abs(sources - est.predict(data.sensors)).max() < 1e-6 * abs(sources).max())
    True
    """
    from .estimators import SLORETA, ClassicalCB

    labels = {"model": name, **({"provenance": provenance} if provenance else {})}
    if isinstance(estimator, (ClassicalCB, SLORETA)):
        return _export_classical(estimator, path, embed_forward, n_times, labels)
    return _export_network(estimator, path, embed_forward, n_channels, n_sources, n_times,
                           labels)


def read_contract(path_or_model):
    """The contract stored in an exported file (dict), read with ``onnx`` alone."""
    import onnx

    model = (path_or_model if isinstance(path_or_model, onnx.ModelProto)
             else onnx.load(str(path_or_model), load_external_data=False))
    meta = {p.key: p.value for p in model.metadata_props}
    if "unfolded_sbl.contract" not in meta:
        raise ValueError(f"{path_or_model} has no unfolded_sbl contract: it was not exported "
                         "by unfolded_sbl, or by a version before 0.2 (export it again with "
                         "us.export_onnx)")
    return json.loads(meta["unfolded_sbl.contract"])


def _inverse_symbolic(g, matrix):
    return g.op("com.microsoft::Inverse", matrix).setType(matrix.type())


def _trace(module, args, path, names, axes, outputs=OUTPUTS, fold=True):
    """``torch.onnx.export`` of ``module`` with the library's settings, loaded back."""
    import onnx
    from torch.onnx import register_custom_op_symbolic

    register_custom_op_symbolic("aten::linalg_inv", _inverse_symbolic, OPSET)
    axes = {k: v for k, v in axes.items() if k in names or k in outputs}
    with torch.no_grad():
        # an embedded lead field is not folded into its products at export: the
        # file keeps the lead field, onnxruntime folds at session start
        torch.onnx.export(module.eval(), args, str(path), dynamo=False, input_names=names,
                          output_names=list(outputs), dynamic_axes=axes,
                          opset_version=OPSET, custom_opsets={"com.microsoft": 1},
                          do_constant_folding=fold)
    return onnx.load(str(path))


def _example_inputs(module, n_channels, n_times, lead_field, neighbours):
    """Example arguments of ``module`` (a :class:`SolverGraph` or ``SLORETAGraph``),
    float64 whatever the solver's dtype, and their dynamic axes."""
    dtype = torch.float64
    values = {
        "sensors": torch.randn(2, n_channels, n_times, dtype=dtype),
        "lead_field": lead_field.to(dtype),
        "noise_var_in": torch.ones(2, n_channels, dtype=dtype),
        "neighbour_index": None if neighbours is None else neighbours[0],
        "neighbour_weight": None if neighbours is None else neighbours[1],
        "regime_check": torch.tensor(True),
        "density_ceiling": torch.tensor(1.0, dtype=torch.float64),
        "source_spacing": torch.tensor(0.0, dtype=torch.float64)}
    names = module.input_names()
    embedded = "lead_field" not in names
    sources = {} if embedded else {1: "sources"}
    channels = {} if embedded else {1: "channels"}
    axes = {"sensors": {0: "batch", **channels, 2: "times"},
            "lead_field": {0: "channels", 1: "sources"},
            "noise_var_in": {0: "batch", **channels},
            "neighbour_index": {0: "sources", 1: "neighbours"},
            "neighbour_weight": {0: "sources", 1: "neighbours"},
            "sources": {0: "batch", **sources, 2: "times"},
            "source_var": {0: "batch", **sources}, "noise_var": {0: "batch", **channels},
            "classical_fallback": {0: "batch"}}
    return tuple(values[n] for n in names), names, axes


# -- learned networks ---------------------------------------------------------------
def _export_network(estimator, path, embed_forward, n_channels, n_sources, n_times, labels):
    import onnx

    from ._export_compose import (
        choose_by_batch_size,
        drop_omitted_inputs,
        set_constants,
        with_classical_fallback,
    )
    from .regime import acting_spacings

    if not hasattr(estimator, "network_"):
        raise ValueError("the estimator is not fitted")
    dtype = _DTYPES[estimator.dtype]
    fwd = estimator.forward_
    n_channels = n_channels or estimator.n_features_in_
    n_sources = n_sources or estimator.n_sources_
    config = estimator._config()
    known = not config["learn_noise"]
    lead_field = torch.as_tensor(fwd.lead_field, dtype=dtype)[:n_channels, :n_sources]
    neighbours = None
    if estimator.network_.needs_neighbours:
        index, weight = estimator._geometry()["neighbours"]
        neighbours = (index[:n_sources].clamp(max=n_sources - 1).cpu(),
                      weight[:n_sources].to(torch.float64).cpu())
    span = acting_spacings(getattr(estimator, "train_spacing_", None),
                           getattr(estimator, "spacing_range_", None))
    regime = {"span": span,
              "outside": bool(embed_forward and estimator._other_resolution())}
    embedded = lead_field if embed_forward else None
    # the corrections in float32 as in torch (onnxruntime has no float64 GELU/Erf
    # kernel either); the solver around them runs in ``dtype``
    learned = SolverGraph(copy.deepcopy(estimator.network_).cpu().cast(dtype), dtype,
                          estimator.average_reference_, known, embedded,
                          neighbours if embed_forward else None, regime=regime)
    # the fallback as torch's: the network without corrections, in float64
    classical = SolverGraph(copy.deepcopy(estimator.network_).cpu().cast(torch.float64),
                            torch.float64, estimator.average_reference_, known,
                            None if embedded is None else embedded.to(torch.float64),
                            classical=True)
    args, names, axes = _example_inputs(learned, n_channels, n_times, lead_field, neighbours)
    network = learned.network
    network.use_inverse = classical.network.use_inverse = True
    branches = {}
    try:
        for paired in (True, False):
            network.export_paired = paired
            branches[paired] = _trace(learned, args, path, names, axes, fold=not embed_forward)
        fallback = _trace(classical, args[:len(classical.input_names())], path,
                          classical.input_names(), axes, fold=not embed_forward)
    finally:
        network.use_inverse = network.export_paired = False
        classical.network.use_inverse = False
    model = with_classical_fallback(choose_by_batch_size(branches[True], branches[False]),
                                    fallback)
    ceiling = getattr(estimator, "density_ceiling", None)
    settings = {"regime_check": np.array(bool(getattr(estimator, "regime_check", True))),
                "density_ceiling": np.array(np.inf if ceiling is None else float(ceiling))}
    if "source_spacing" in names:
        # the source space is taken to be the trained one unless a caller says
        settings["source_spacing"] = np.array(float(estimator.train_spacing_ or 0.0))
    set_constants(model, settings)
    drop_omitted_inputs(model.graph)
    names = [n for n in names if n not in settings]
    meta = {"unfolded_sbl_version": __version__, "config": config,
            "dtype": estimator.dtype, "n_channels": estimator.n_features_in_,
            "n_sources": estimator.n_sources_,
            "train_spacing": getattr(estimator, "train_spacing_", None),
            "spacing_range": getattr(estimator, "spacing_range_", None),
            "density_ceiling": ceiling,
            "fixed_sizes": "bias" in (config["correction"], config["noise_correction"])}
    model.metadata_props.add(key="unfolded_sbl", value=json.dumps(meta))
    model.metadata_props.add(key="unfolded_sbl.contract", value=json.dumps(
        contract(estimator, names, OUTPUTS, embed_forward, labels, settings)))
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return str(path)


# -- classical solvers --------------------------------------------------------------
def _classical_network(est):
    """The unfolded network without corrections: ClassicalCB's iterations as layers."""
    from .network import UnfoldedChampagne

    if est.noise_mode_ not in ("learn", "known") or est.tol != 0:
        raise ValueError("ClassicalCB exports with noise='learn' or 'known' and tol=0 "
                         f"(a fixed depth), got noise={est.noise!r}, tol={est.tol!r}")
    network = UnfoldedChampagne(n_layers=est.n_iter, correction="none",
                                noise_correction="none", learn_noise=est.noise_mode_ == "learn",
                                init_source_var=est.init_source_var,
                                init_noise_var=est.init_noise_var,
                                prune_threshold=est.prune_threshold)
    return network.cast(_DTYPES[est.dtype]).eval()


def _export_classical(est, path, embed_forward, n_times, labels):
    """ClassicalCB or SLORETA as a self-contained file (see :func:`export_onnx`)."""
    import onnx
    from sklearn.utils.validation import check_is_fitted

    from ._export_compose import drop_omitted_inputs
    from .estimators import ClassicalCB

    check_is_fitted(est, "lead_field_")
    fwd = est.forward_
    classical = isinstance(est, ClassicalCB)
    dtype = _DTYPES[est.dtype] if classical else torch.float64
    lead_field = torch.as_tensor(fwd.lead_field, dtype=dtype)
    embedded = lead_field if embed_forward else None
    if classical:
        module = SolverGraph(_classical_network(est), dtype, est.average_reference_,
                             est.noise_mode_ == "known", embedded)
        outputs = OUTPUTS
    else:
        module = SLORETAGraph(est.alpha, est.output, est.average_reference_, embedded)
        outputs = ("sources",)
    args, names, axes = _example_inputs(module, fwd.n_channels, n_times, lead_field, None)
    network = getattr(module, "network", None)
    if network is not None:
        network.use_inverse = True
    try:
        model = _trace(module, args, path, names, axes, outputs, fold=not embed_forward)
    finally:
        if network is not None:
            network.use_inverse = False
    drop_omitted_inputs(model.graph)
    model.metadata_props.add(key="unfolded_sbl.contract", value=json.dumps(
        contract(est, names, outputs, embed_forward, labels)))
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return str(path)


_SHAPES_IN = {"sensors": "(batch, channels, times)", "lead_field": "(channels, sources)",
              "noise_var_in": "(batch, channels)", "neighbour_index": "(sources, neighbours)",
              "neighbour_weight": "(sources, neighbours)"}
_UNITS_IN = {"sensors": "V, any reference; a channel with a non-finite value in a sample "
                        "is taken as zero in that sample",
             "lead_field": "V / (A m)", "noise_var_in": "V^2",
             "neighbour_index": "int64 source indices (mesh_neighbourhoods)",
             "neighbour_weight": "weights (mesh_neighbourhoods)"}


def contract(est, inputs, outputs, embed_forward, labels=None, settings=None):
    """The file's contract, stored as its ``unfolded_sbl.contract`` metadata (JSON):
    what goes in and comes out, in which units, for which forward model and model
    (``labels``: ``model`` name and optional ``provenance``); readable with ``onnx``
    or ``onnxruntime`` alone."""
    from .estimators import SLORETA, ClassicalCB

    fwd = est.forward_
    units_out = {"sources": "A m" if getattr(est, "output", "current") == "current"
                 else "standardized (a.u.)", "source_var": "(A m)^2", "noise_var": "V^2",
                 "classical_fallback": "bool: the sample took the classical updates"}
    if isinstance(est, ClassicalCB):
        regime = "none: the classical solver"
    elif isinstance(est, SLORETA):
        regime = "none: a linear solver"
    else:
        regime = ("in the graph: samples outside the trained regime (regime level, window "
                  "length, source spacing) or denser than density_ceiling are solved by "
                  "the classical updates; classical_fallback marks them")
    return {"contract_version": CONTRACT_VERSION, "unfolded_sbl_version": __version__,
            "solver": type(est).__name__, "model": None, **(labels or {}), "params": {
                k: v for k, v in est.get_params().items()
                if k != "forward" and isinstance(v, (str, int, float, bool, type(None)))},
            "inputs": {n: {"shape": _SHAPES_IN[n], "units": _UNITS_IN[n]} for n in inputs},
            "outputs": {n: {"units": units_out[n]} for n in outputs},
            "reference": "average" if est.average_reference_ else "as given",
            "forward": {"name": fwd.name, "cap": fwd.cap, "spacing": fwd.spacing,
                        "n_channels": fwd.n_channels, "n_sources": fwd.n_sources,
                        "ch_names": fwd.ch_names, "embedded": bool(embed_forward),
                        # where the sources are, for a map drawn without the package
                        "source_positions_mm": (np.round(1e3 * fwd.positions, 1).tolist()
                                                if embed_forward else None)},
            "regime_check": regime,
            # constants of the file (numbers in SI units; inf: no density ceiling)
            "settings": {k: (v.item() if np.isfinite(v) else "inf")
                         for k, v in (settings or {}).items()}}
