"""ONNX export of trained unfolded networks.

Standard ONNX has no matrix inverse or Cholesky, and no torch solver exports
to standard ops.  The graph therefore uses onnxruntime's contrib
operator ``com.microsoft::Inverse`` (CPU and CUDA kernels) for the N x N model
covariance, the one place the network needs it: accurate (float32 floor) and
fast, where standard-op fallbacks were either inaccurate (Newton-Schulz) or
slow (Gauss-Jordan in a Loop).  The file therefore needs onnxruntime, which
the package depends on.

Inputs: ``sensors`` (batch, channels, times) and ``lead_field``
(channels, sources), normalised as ``unfolded_sbl`` does in its wrapper (see
:class:`unfolded_sbl.onnx_runtime.OnnxSBLRegressor`); known-noise models also
take ``noise_var`` (batch, channels), graph models ``neighbour_index`` and
``neighbour_weight`` (sources, neighbours), the mesh neighbourhoods of
:func:`unfolded_sbl.forward.mesh_neighbourhoods`.  Outputs: ``sources``, ``source_var``,
``noise_var``.  Every axis is dynamic, so one file serves any cap and source
space (bias models record their fixed sizes in the metadata).
"""

from __future__ import annotations

import json

import numpy as np
import torch
from torch import nn

from . import __version__
from ._base import _DTYPES

OPSET = 17


class _Graph(nn.Module):
    def __init__(self, network, with_noise):
        super().__init__()
        self.network = network
        self.with_noise = with_noise

    def forward(self, sensors, lead_field, *extra):
        extra = list(extra)
        noise_var = extra.pop(0) if self.with_noise else None
        neighbours = (extra[0], extra[1]) if self.network.needs_neighbours else None
        out = self.network(sensors, lead_field, noise_var, neighbours=neighbours)
        return out["sources"], out["source_var"], out["noise_var"]


OUTPUTS = ("sources", "source_var", "noise_var")


def _branch(model, prefix):
    """The graph of ``model`` as an ``If`` branch: no inputs of its own (it reads the
    outer graph's inputs by name), every other name prefixed."""
    from onnx import compose, helper

    graph = compose.add_prefix_graph(model.graph, prefix, rename_inputs=False)
    return helper.make_graph(list(graph.node), f"{prefix}graph", [], list(graph.output),
                             initializer=list(graph.initializer),
                             value_info=list(graph.value_info))


def _choose_by_batch_size(paired, single):
    """One model that runs the pair (GEMM) form of the products for batches of
    ``PAIR_BATCH_MIN`` or more and the per-sample form below, as torch does: an
    ``If`` on the batch size of ``sensors`` over the two exported graphs."""
    from onnx import TensorProto, helper

    from ._champagne import PAIR_BATCH_MIN

    nodes = [
        helper.make_node("Shape", ["sensors"], ["sensors_shape"]),
        helper.make_node("Gather", ["sensors_shape", "batch_axis"], ["batch"], axis=0),
        helper.make_node("GreaterOrEqual", ["batch", "pair_batch_min"], ["use_pairs"]),
        helper.make_node("If", ["use_pairs"], list(OUTPUTS),
                         then_branch=_branch(paired, "paired_"),
                         else_branch=_branch(single, "single_")),
    ]
    constants = [helper.make_tensor("batch_axis", TensorProto.INT64, [], [0]),
                 helper.make_tensor("pair_batch_min", TensorProto.INT64, [], [PAIR_BATCH_MIN])]
    graph = helper.make_graph(nodes, "unfolded_sbl", list(single.graph.input),
                              list(single.graph.output), initializer=constants)
    model = helper.make_model(graph, opset_imports=list(single.opset_import),
                              producer_name="unfolded_sbl")
    model.ir_version = single.ir_version  # what torch wrote (onnxruntime reads it)
    return model


def _inverse_symbolic(g, matrix):
    return g.op("com.microsoft::Inverse", matrix).setType(matrix.type())


def export_onnx(estimator, path, n_channels=None, n_sources=None, n_times=20,
                embed_forward=False):
    """Write a fitted estimator as one ONNX file.

    Parameters
    ----------
    estimator : UnfoldedSBLRegressor | ClassicalCB | SLORETA
        Fitted (or loaded) estimator, exported in its ``dtype``.  A network
        (float64 by default, or float32 with ``dtype="float32"``: products in
        float32, the N x N factorisation in float64 inside the graph) takes
        normalised inputs, as :class:`~unfolded_sbl.OnnxSBLRegressor` prepares
        them.  ``ClassicalCB`` (``noise="learn"`` or ``"known"``, ``tol=0``) and
        ``SLORETA`` give self-contained files: they take ``sensors`` in volts
        (any reference) and return sources in A m (sLORETA's standardised map
        in its units), so plain onnxruntime runs them (see :func:`contract`).
    path : str | Path
    n_channels, n_sources, n_times : int | None
        Sizes of the example inputs used to trace a network (default: the
        estimator's forward model); the axes stay dynamic.
    embed_forward : bool
        Classical solvers: the lead field is a constant of the file, whose only
        inputs are then ``sensors`` (and ``noise_var`` for known noise).

    Returns
    -------
    path : str
    """
    from .estimators import SLORETA, ClassicalCB

    if isinstance(estimator, (ClassicalCB, SLORETA)):
        return _export_classical(estimator, path, embed_forward, n_times)
    if embed_forward:
        raise ValueError("embed_forward=True is for ClassicalCB and SLORETA; a network's "
                         "file takes its lead field as an input")
    return _export_network(estimator, path, n_channels, n_sources, n_times)


def _export_network(estimator, path, n_channels=None, n_sources=None, n_times=20):
    import onnx
    from torch.onnx import register_custom_op_symbolic

    if not hasattr(estimator, "network_"):
        raise ValueError("the estimator is not fitted")
    import copy

    dtype = _DTYPES[estimator.dtype]
    # the corrections in float32 as in torch (onnxruntime has no float64 GELU/Erf
    # kernel either); the solver around them runs in ``dtype``
    network = copy.deepcopy(estimator.network_).cast(dtype)
    config = estimator._config()
    n_channels = n_channels or estimator.n_features_in_
    n_sources = n_sources or estimator.n_sources_
    graph = _Graph(network, with_noise=not config["learn_noise"]).eval()
    sensors = torch.randn(2, n_channels, n_times, dtype=dtype)
    lead_field = torch.as_tensor(estimator.lead_field_, dtype=dtype)[:, :n_sources]
    args = (sensors, lead_field)
    names = ["sensors", "lead_field"]
    axes = {"sensors": {0: "batch", 1: "channels", 2: "times"},
            "lead_field": {0: "channels", 1: "sources"},
            "sources": {0: "batch", 1: "sources", 2: "times"},
            "source_var": {0: "batch", 1: "sources"}, "noise_var": {0: "batch", 1: "channels"}}
    if not config["learn_noise"]:
        args = args + (torch.ones(2, n_channels, dtype=dtype),)
        names.append("noise_var_in")
        axes["noise_var_in"] = {0: "batch", 1: "channels"}
    if network.needs_neighbours:
        index, weight = estimator._geometry()["neighbours"]
        args = args + (index[:n_sources].clamp(max=n_sources - 1), weight[:n_sources].to(dtype))
        names += ["neighbour_index", "neighbour_weight"]
        axes["neighbour_index"] = {0: "sources", 1: "neighbours"}
        axes["neighbour_weight"] = {0: "sources", 1: "neighbours"}
    register_custom_op_symbolic("aten::linalg_inv", _inverse_symbolic, OPSET)
    branches = {}
    network.use_inverse = True
    try:
        for paired in (True, False):
            network.export_paired = paired
            with torch.no_grad():
                torch.onnx.export(graph, args, str(path), dynamo=False, input_names=names,
                                  output_names=list(OUTPUTS), dynamic_axes=axes,
                                  opset_version=OPSET, custom_opsets={"com.microsoft": 1})
            branches[paired] = onnx.load(str(path))
    finally:
        network.use_inverse = False
        network.export_paired = False
    model = _choose_by_batch_size(branches[True], branches[False])
    meta = {"unfolded_sbl_version": __version__, "config": config,
            "lead_field_scale_rule": "trace(L L^T) = n_channels - 1 (average reference)",
            "dtype": estimator.dtype, "n_channels": estimator.n_features_in_,
            "n_sources": estimator.n_sources_,
            "train_spacing": getattr(estimator, "train_spacing_", None),
            "spacing_range": getattr(estimator, "spacing_range_", None),
            # so that OnnxSBLRegressor(path) runs the density check the model was
            # shipped with (density_ceiling="auto")
            "density_ceiling": estimator.density_ceiling,
            "fixed_sizes": "bias" in (config["correction"], config["noise_correction"])}
    model.metadata_props.add(key="unfolded_sbl", value=json.dumps(meta))
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return str(path)


# -- self-contained classical solvers -------------------------------------------------
#: Version of the self-contained contract (inputs in volts, outputs in A m).
CONTRACT_VERSION = 1


def _physical_lead_field(lead_field, average_reference):
    """The referenced lead field scaled to ``trace(L L^T)`` = independent channels, and
    that scale: what every estimator's ``fit`` computes, inside the graph."""
    if average_reference:
        lead_field = lead_field - lead_field.mean(dim=0, keepdim=True)
    n_effective = lead_field.shape[0] - int(average_reference)
    scale = (lead_field.pow(2).sum() / n_effective).sqrt()
    return lead_field / scale, scale


class _ClassicalGraph(nn.Module):
    """Volts in, A m out around the classical updates: the reference and the scaling
    of :class:`~unfolded_sbl.ClassicalCB`, undone on the outputs."""

    def __init__(self, network, average_reference, with_noise, lead_field=None):
        super().__init__()
        self.network = network
        self.average_reference = average_reference
        self.with_noise = with_noise
        self.embedded = lead_field is not None
        if self.embedded:
            self.register_buffer("lead_field", lead_field)

    def forward(self, sensors, *extra):
        extra = list(extra)
        lead_field = self.lead_field if self.embedded else extra.pop(0)
        noise_var = extra.pop(0) if self.with_noise else None
        Y = sensors - sensors.mean(dim=1, keepdim=True) if self.average_reference else sensors
        power = Y.pow(2).mean(dim=(1, 2))
        nonzero = power > 0
        scale = torch.where(nonzero, power, torch.ones_like(power)).sqrt()
        normalised, lead_scale = _physical_lead_field(lead_field, self.average_reference)
        noise = None if noise_var is None else noise_var / scale[:, None] ** 2
        out = self.network(Y / scale[:, None, None], normalised, noise)
        source_scale = scale / lead_scale * nonzero.to(scale.dtype)
        return (out["sources"] * source_scale[:, None, None],
                out["source_var"] * source_scale[:, None] ** 2,
                out["noise_var"] * (scale * nonzero.to(scale.dtype))[:, None] ** 2,
                torch.zeros_like(nonzero))


class _SLORETAGraph(nn.Module):
    """sLORETA from volts: ``K = L^T (L L^T + alpha I)^-1`` on the scaled lead field,
    standardised by the resolution matrix's diagonal, or as currents in A m."""

    def __init__(self, alpha, output, average_reference, lead_field=None):
        super().__init__()
        self.alpha, self.output = float(alpha), output
        self.average_reference = average_reference
        self.embedded = lead_field is not None
        if self.embedded:
            self.register_buffer("lead_field", lead_field)

    def forward(self, sensors, *extra):
        lead_field = self.lead_field if self.embedded else extra[0]
        Y = sensors - sensors.mean(dim=1, keepdim=True) if self.average_reference else sensors
        L, lead_scale = _physical_lead_field(lead_field, self.average_reference)
        eye = torch.eye(L.shape[0], dtype=L.dtype)
        operator = L.T @ torch.linalg.inv(L @ L.T + self.alpha * eye)  # (M, N)
        if self.output == "standardized":
            resolution = (operator * L.T).sum(dim=1)
            weight = torch.where(resolution > 0, resolution.clamp(min=1e-300).rsqrt(),
                                 torch.zeros_like(resolution))
        else:
            weight = torch.ones(L.shape[1], dtype=L.dtype) / lead_scale
        return (operator * weight[:, None]) @ Y


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


def _export_classical(est, path, embed_forward, n_times):
    """ClassicalCB or SLORETA as a self-contained file (see :func:`export_onnx`)."""
    import onnx
    from sklearn.utils.validation import check_is_fitted
    from torch.onnx import register_custom_op_symbolic

    from .estimators import ClassicalCB

    check_is_fitted(est, "lead_field_")
    fwd = est.forward_
    classical = isinstance(est, ClassicalCB)
    dtype = _DTYPES[est.dtype] if classical else torch.float64
    lead_field = torch.as_tensor(fwd.lead_field, dtype=dtype)
    embedded = lead_field if embed_forward else None
    known = classical and est.noise_mode_ == "known"
    if classical:
        module = _ClassicalGraph(_classical_network(est), est.average_reference_, known,
                                 embedded)
        outputs = ["sources", "source_var", "noise_var", "classical_fallback"]
    else:
        module = _SLORETAGraph(est.alpha, est.output, est.average_reference_, embedded)
        outputs = ["sources"]
    n_channels = fwd.n_channels
    args, names = (torch.randn(2, n_channels, n_times, dtype=dtype),), ["sensors"]
    axes = {"sensors": {0: "batch", 2: "times"}, "sources": {0: "batch", 2: "times"},
            "source_var": {0: "batch"}, "noise_var": {0: "batch"},
            "classical_fallback": {0: "batch"}}
    if not embed_forward:
        args, names = args + (lead_field,), names + ["lead_field"]
        axes["lead_field"] = {1: "sources"}
        for key in ("sources", "source_var"):
            axes[key][1] = "sources"
    if known:
        args, names = args + (torch.ones(2, n_channels, dtype=dtype),), names + ["noise_var_in"]
        axes["noise_var_in"] = {0: "batch"}
    axes = {k: v for k, v in axes.items() if k in names or k in outputs}
    register_custom_op_symbolic("aten::linalg_inv", _inverse_symbolic, OPSET)
    network = getattr(module, "network", None)
    if network is not None:
        network.use_inverse = True
    try:
        with torch.no_grad():
            # an embedded lead field is not folded into its products at export: the
            # file keeps the lead field, onnxruntime folds at session start
            torch.onnx.export(module.eval(), args, str(path), dynamo=False,
                              input_names=names, output_names=outputs, dynamic_axes=axes,
                              opset_version=OPSET, custom_opsets={"com.microsoft": 1},
                              do_constant_folding=not embed_forward)
    finally:
        if network is not None:
            network.use_inverse = False
    model = onnx.load(str(path))
    model.metadata_props.add(key="unfolded_sbl.contract", value=json.dumps(
        contract(est, names, outputs, embed_forward)))
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return str(path)


def contract(est, inputs, outputs, embed_forward):
    """The self-contained file's contract, stored as its ``unfolded_sbl.contract``
    metadata (JSON): what goes in and comes out, in which units, for which forward
    model; readable with ``onnx`` or ``onnxruntime`` alone."""
    from .estimators import ClassicalCB

    fwd = est.forward_
    units_out = {"sources": "A m" if getattr(est, "output", "current") == "current"
                 else "standardized (a.u.)", "source_var": "(A m)^2", "noise_var": "V^2",
                 "classical_fallback": "bool: the sample took the classical updates"}
    shapes_in = {"sensors": "(batch, channels, times)", "lead_field": "(channels, sources)",
                 "noise_var_in": "(batch, channels)"}
    units_in = {"sensors": "V, any reference", "lead_field": "V / (A m)",
                "noise_var_in": "V^2"}
    return {"contract_version": CONTRACT_VERSION, "unfolded_sbl_version": __version__,
            "solver": type(est).__name__, "params": {
                k: v for k, v in est.get_params().items()
                if k != "forward" and isinstance(v, (str, int, float, bool, type(None)))},
            "inputs": {n: {"shape": shapes_in[n], "units": units_in[n]} for n in inputs},
            "outputs": {n: {"units": units_out[n]} for n in outputs},
            "reference": "average" if est.average_reference_ else "as given",
            "forward": {"name": fwd.name, "cap": fwd.cap, "spacing": fwd.spacing,
                        "n_channels": fwd.n_channels, "n_sources": fwd.n_sources,
                        "ch_names": fwd.ch_names, "embedded": bool(embed_forward),
                        # where the sources are, for a map drawn without the package
                        "source_positions_mm": (np.round(1e3 * fwd.positions, 1).tolist()
                                                if embed_forward else None)},
            "regime_check": "none: the classical solver" if isinstance(est, ClassicalCB)
            else "none: a linear solver"}
