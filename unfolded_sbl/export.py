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


def export_onnx(estimator, path, n_channels=None, n_sources=None, n_times=20):
    """Write a fitted :class:`UnfoldedSBLRegressor` as one ONNX file.

    Parameters
    ----------
    estimator : UnfoldedSBLRegressor
        Fitted (or loaded) estimator; exported in its ``dtype``: float64 by
        default, or float32 (load it with ``dtype="float32"``) for a graph whose
        products run in float32, faster; the N x N factorisation
        stays float64 inside both (``UnfoldedChampagne._precision``).
    path : str | Path
    n_channels, n_sources, n_times : int | None
        Sizes of the example inputs used to trace the graph (default: the
        estimator's forward model); the axes stay dynamic.

    Returns
    -------
    path : str
    """
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
