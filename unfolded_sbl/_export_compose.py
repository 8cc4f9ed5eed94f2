"""ONNX graph surgery for :mod:`unfolded_sbl.export`: traced graphs joined by ``If``.

torch's tracer flattens data-dependent branches, so the two branches the exported
solvers take are traced separately and joined here: the pair or per-sample form
of the products by batch size, and the classical fallback only when a sample of
the batch needs it (it costs a second solve).
"""

from __future__ import annotations

from onnx import TensorProto, compose, helper, numpy_helper

from ._champagne import PAIR_BATCH_MIN

SOLVED = ("sources", "source_var", "noise_var")


def _branch(model, prefix, extra_nodes=(), outputs=None):
    """The graph of ``model`` as an ``If`` branch: no inputs of its own (it reads the
    outer graph's inputs by name), every other name prefixed; ``extra_nodes`` run
    after it and ``outputs`` (value infos) replace its outputs."""
    graph = compose.add_prefix_graph(model.graph, prefix, rename_inputs=False)
    return helper.make_graph(list(graph.node) + list(extra_nodes), f"{prefix}graph", [],
                             list(graph.output) if outputs is None else outputs,
                             initializer=list(graph.initializer),
                             value_info=list(graph.value_info))


def _model(graph, like):
    model = helper.make_model(graph, opset_imports=list(like.opset_import),
                              producer_name="unfolded_sbl")
    model.ir_version = like.ir_version  # what torch wrote (onnxruntime reads it)
    return model


def _renamed(value_info, name):
    copy = type(value_info)()
    copy.CopyFrom(value_info)
    copy.name = name
    return copy


def choose_by_batch_size(paired, single):
    """One model that runs the pair (GEMM) form of the products for batches of
    ``PAIR_BATCH_MIN`` or more and the per-sample form below, as torch does: an
    ``If`` on the batch size of ``sensors`` over the two traced graphs."""
    outputs = [o.name for o in single.graph.output]
    nodes = [
        helper.make_node("Shape", ["sensors"], ["sensors_shape"]),
        helper.make_node("Gather", ["sensors_shape", "batch_axis"], ["batch"], axis=0),
        helper.make_node("GreaterOrEqual", ["batch", "pair_batch_min"], ["use_pairs"]),
        helper.make_node("If", ["use_pairs"], outputs,
                         then_branch=_branch(paired, "paired_"),
                         else_branch=_branch(single, "single_")),
    ]
    constants = [helper.make_tensor("batch_axis", TensorProto.INT64, [], [0]),
                 helper.make_tensor("pair_batch_min", TensorProto.INT64, [], [PAIR_BATCH_MIN])]
    graph = helper.make_graph(nodes, "unfolded_sbl", list(single.graph.input),
                              list(single.graph.output), initializer=constants)
    return _model(graph, single)


def with_classical_fallback(learned, classical):
    """The learned model's outputs, with the samples it flags in
    ``classical_fallback`` replaced by the classical model's: the classical graph
    runs (on the whole batch) only when at least one sample is flagged."""
    ours = compose.add_prefix_graph(learned.graph, "learned_", rename_inputs=False)
    by_name = {o.name: o for o in learned.graph.output}
    flags = "learned_classical_fallback"
    nodes = list(ours.node) + [
        helper.make_node("Cast", [flags], ["fallback_int"], to=TensorProto.INT32),
        helper.make_node("ReduceMax", ["fallback_int"], ["fallback_any_int"], keepdims=0),
        helper.make_node("Cast", ["fallback_any_int"], ["fallback_any"], to=TensorProto.BOOL),
    ]
    merge = [helper.make_node("Unsqueeze", [flags, "axes_12"], ["flags_3d"]),
             helper.make_node("Unsqueeze", [flags, "axes_1"], ["flags_2d"])]
    for name in SOLVED:
        rows = "flags_3d" if name == "sources" else "flags_2d"
        merge.append(helper.make_node("Where", [rows, f"classical_{name}", f"learned_{name}"],
                                      [f"merged_{name}"]))
    then_outputs = [_renamed(by_name[n], f"merged_{n}") for n in SOLVED]
    then_branch = _branch(classical, "classical_", merge, then_outputs)
    then_branch.initializer.extend([helper.make_tensor("axes_12", TensorProto.INT64, [2], [1, 2]),
                                    helper.make_tensor("axes_1", TensorProto.INT64, [1], [1])])
    else_branch = helper.make_graph(
        [helper.make_node("Identity", [f"learned_{n}"], [f"kept_{n}"]) for n in SOLVED],
        "learned_only", [], [_renamed(by_name[n], f"kept_{n}") for n in SOLVED])
    nodes += [helper.make_node("If", ["fallback_any"], list(SOLVED), then_branch=then_branch,
                               else_branch=else_branch),
              helper.make_node("Identity", [flags], ["classical_fallback"])]
    graph = helper.make_graph(nodes, "unfolded_sbl", list(learned.graph.input),
                              list(learned.graph.output), initializer=list(ours.initializer),
                              value_info=list(ours.value_info))
    return _model(graph, learned)


def set_constants(model, values):
    """Make graph inputs, or replace graph constants, by initializers holding
    ``values`` (numpy arrays): the regime check's settings, which a file fixes and
    :class:`~unfolded_sbl.OnnxSBLRegressor` may change before opening it."""
    names = set(values)
    kept = [i for i in model.graph.input if i.name not in names]
    del model.graph.input[:]
    model.graph.input.extend(kept)
    kept = [i for i in model.graph.initializer if i.name not in names]
    del model.graph.initializer[:]
    model.graph.initializer.extend(kept)
    for name, value in values.items():
        model.graph.initializer.append(numpy_helper.from_array(value, name))
    return model


def drop_omitted_inputs(graph):
    """Remove the empty names torch writes for omitted trailing optional inputs (e.g.
    Clip's max), in ``graph`` and its subgraphs: the same model, and one that tools
    which resolve every input by name (skl2onnx's topological sort) can read."""
    for node in graph.node:
        names = list(node.input)
        while names and not names[-1]:
            names.pop()
        if len(names) != len(node.input):
            del node.input[:]
            node.input.extend(names)
        for attribute in node.attribute:
            if attribute.type == attribute.GRAPH:
                drop_omitted_inputs(attribute.g)
    return graph
