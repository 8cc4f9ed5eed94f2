"""skl2onnx converters: ``skl2onnx.to_onnx`` on a Pipeline that ends in a solver.

sklearn users reach ONNX through skl2onnx.  :func:`register_converters` teaches it
the package's estimators: each converts to its self-contained graph
(:func:`unfolded_sbl.export_onnx` with the forward model embedded; an
:class:`~unfolded_sbl.OnnxSBLRegressor` to its file with the lead field made a
constant), inlined into the pipeline's graph under a unique prefix.  The
pipeline's output is the sources, (n_samples, n_sources, n_times) in A m.

skl2onnx's own ``add_onnx_graph`` (and ``onnx.compose.add_prefix``) do not rename
the names that the solvers' ``If`` branches read from the outer graph, so every
name of the graph and its branches is prefixed here, one map for all scopes.

Examples
--------
>>> import numpy as np, onnxruntime, skl2onnx, unfolded_sbl as us
>>> from skl2onnx.common.data_types import DoubleTensorType
>>> from sklearn.pipeline import make_pipeline
>>> us.register_converters()
>>> X = us.simulate("biosemi64-ico3", 1, random_state=0).sensors
>>> pipe = make_pipeline(us.ClassicalCB("biosemi64-ico3", n_iter=5, tol=0)).fit(X)
>>> onx = skl2onnx.to_onnx(pipe, initial_types=[("X", DoubleTensorType([None, 64, None]))])
>>> session = onnxruntime.InferenceSession(onx.SerializeToString())
>>> out = session.run(None, {"X": X})[0]
>>> bool(np.allclose(out, pipe.predict(X), rtol=1e-6, atol=1e-6 * np.abs(out).max()))
True
"""

from __future__ import annotations

import os
import tempfile


def _solver_graph(est):
    """The estimator's self-contained ONNX model, its only input ``sensors``."""
    import onnx

    from ._export_compose import drop_omitted_inputs, set_constants
    from .export import export_onnx
    from .onnx_runtime import OnnxSBLRegressor

    if isinstance(est, OnnxSBLRegressor):
        # the forward model and the settings as constants, as the estimator feeds them
        model = set_constants(onnx.load(str(est.path)),
                              {**est._forward_feeds(), **est._settings_values()})
    else:
        with tempfile.TemporaryDirectory() as folder:
            path = export_onnx(est, os.path.join(folder, "solver.onnx"), embed_forward=True)
            model = onnx.load(path)
    drop_omitted_inputs(model.graph)  # files exported before it was done at export
    if [i.name for i in model.graph.input] != ["sensors"]:
        raise ValueError(
            f"{type(est).__name__} converts to ONNX with data as its only input; "
            f"known-noise models also take noise_var, which a pipeline cannot pass")
    return model


def _prefixed(graph, prefix):
    """``graph`` with every value and node name, in it and its subgraphs, prefixed (the
    names are unique across scopes in the exported graphs)."""
    def walk(g, visit):
        visit(g)
        for node in g.node:
            for attribute in node.attribute:
                if attribute.type == attribute.GRAPH:
                    walk(attribute.g, visit)

    names = set()

    def collect(g):
        names.update(v.name for v in [*g.input, *g.output, *g.value_info])
        names.update(t.name for t in g.initializer)
        for node in g.node:
            names.update(node.output)

    def rename(g):
        for value in [*g.input, *g.output, *g.value_info, *g.initializer]:
            value.name = prefix + value.name
        for node in g.node:
            node.name = prefix + node.name if node.name else ""
            for field in (node.input, node.output):
                renamed = [prefix + n if n in names else n for n in field]
                del field[:]
                field.extend(renamed)

    walk(graph, collect)
    names.discard("")
    walk(graph, rename)
    return graph


def _shape(operator):
    from skl2onnx.common.data_types import DoubleTensorType

    est = operator.raw_operator
    dims = operator.inputs[0].type.shape
    if len(dims) != 3:
        raise ValueError(f"{type(est).__name__} takes X of shape (n_samples, n_channels, "
                         f"n_times) in skl2onnx, got an input of rank {len(dims)}")
    operator.outputs[0].type = DoubleTensorType([dims[0], est.n_sources_, dims[2]])


def _convert(scope, operator, container):
    from onnx import TensorProto, helper

    prefix = scope.get_unique_operator_name("UnfoldedSBL") + "_"
    model = _solver_graph(operator.raw_operator)
    _prefixed(model.graph, prefix)
    container.nodes.append(helper.make_node(
        "Cast", [operator.inputs[0].full_name], [prefix + "sensors"],
        to=TensorProto.DOUBLE, name=prefix + "cast_in"))
    container.nodes.extend(model.graph.node)
    container.initializers.extend(model.graph.initializer)
    container.nodes.append(helper.make_node(
        "Identity", [prefix + "sources"], [operator.outputs[0].full_name],
        name=prefix + "sources_out"))
    for opset in model.opset_import:
        container.node_domain_version_pair_sets.add((opset.domain, opset.version))


def register_converters():
    """Register converters for ClassicalCB, SLORETA, UnfoldedSBLRegressor and
    OnnxSBLRegressor with skl2onnx (``update_registered_converter``), so that
    ``skl2onnx.to_onnx`` converts pipelines ending in them; idempotent."""
    from skl2onnx import update_registered_converter

    from .estimators import SLORETA, ClassicalCB
    from .onnx_runtime import OnnxSBLRegressor
    from .unfolded import UnfoldedSBLRegressor

    for cls in (ClassicalCB, SLORETA, UnfoldedSBLRegressor, OnnxSBLRegressor):
        update_registered_converter(cls, f"UnfoldedSBL{cls.__name__}", _shape, _convert,
                                    overwrite=True)
