"""The graph correction: mesh neighbourhoods in millimetres, exact classical start,
ONNX parity at several source counts, and the start from a pointwise model."""

import numpy as np
import pytest
import torch

import unfolded_sbl as us
from unfolded_sbl.forward import GRAPH_RADIUS, GRAPH_SIGMA, mesh_neighbourhoods
from unfolded_sbl.network import _smooth_rows, neighbour_matrix, pointwise_to_graph


def _kernel_radius(fwd):
    index, weight, distance = mesh_neighbourhoods(fwd)
    return index, weight, distance, np.sqrt((weight * distance ** 2).sum(1))


def test_neighbourhoods_of_ico3_and_ico4_cover_the_same_radius():
    radii = {}
    for name in ("biosemi64-ico3", "biosemi64-ico4"):
        fwd = us.load_forward(name)
        index, weight, distance, radius = _kernel_radius(fwd)
        assert index.shape == weight.shape == distance.shape
        assert index.shape[0] == fwd.n_sources
        np.testing.assert_allclose(weight.sum(1), 1.0, rtol=1e-12)
        assert distance.max() <= GRAPH_RADIUS
        # every source is its own neighbour, and has mesh neighbours besides
        assert np.all((index == np.arange(fwd.n_sources)[:, None]).any(1))
        assert np.all((weight > 0).sum(1) >= 2)
        radii[name] = np.median(radius)
    # the same patch of cortex: the kernel's RMS radius is within 10 % (4x more sources)
    ico3, ico4 = radii.values()
    assert abs(ico4 / ico3 - 1) < 0.1
    assert 0.5 * GRAPH_SIGMA < ico3 < 1.5 * GRAPH_SIGMA
    # ... while in mesh hops it is not: ico4 has about 3x more neighbours
    counts = [(mesh_neighbourhoods(us.load_forward(n))[1] > 0).sum(1).mean() for n in radii]
    assert counts[1] > 2 * counts[0]


def _graph_network(fwd, scale=0.3):
    net = us.UnfoldedSBLRegressor(fwd, correction="graph", n_layers=5,
                                  max_epochs=0).fit_simulated()
    torch.manual_seed(0)
    with torch.no_grad():
        for p in net.network_.parameters():
            p.add_(scale * torch.randn_like(p))
    return net


def test_graph_correction_uses_the_neighbourhood(small_fwd):
    """Other neighbourhood weights give another output: the inputs are used."""
    net = _graph_network(small_fwd)
    Y, _, _ = net._normalise(us.simulate(small_fwd, 2, random_state=0, n_times=10).sensors)
    index, weight = net._geometry()["neighbours"]
    alone = (index == torch.arange(len(index))[:, None]).to(weight.dtype)
    alone = alone / alone.sum(1, keepdim=True)
    lead_field = net._tensor(net.lead_field_)
    with torch.no_grad():
        mesh = net.network_(Y, lead_field, neighbours=(index, weight))["sources"]
        self_only = net.network_(Y, lead_field, neighbours=(index, alone))["sources"]
    assert torch.linalg.norm(mesh - self_only) > 1e-3 * torch.linalg.norm(mesh)


def test_onnx_graph_model_matches_torch_at_two_source_counts(tmp_path):
    ico3 = us.load_forward("biosemi64-ico3")
    net = _graph_network(ico3)
    path = us.export_onnx(net, tmp_path / "graph.onnx")
    for name in ("biosemi64-ico3", "things63-ico4"):
        fwd = us.load_forward(name)
        torch_est = us.UnfoldedSBLRegressor(fwd, correction="graph", n_layers=5,
                                            max_epochs=0).fit_simulated()
        torch_est.network_.load_state_dict(net.network_.state_dict())
        # the corrections themselves at ico4 (the regime check would skip them there)
        onnx_est = us.OnnxSBLRegressor(path, forward=fwd, regime_check=False).fit()
        X = us.simulate(fwd, 3, random_state=1, n_times=20).sensors
        ref, out = torch_est.predict(X), onnx_est.predict(X)
        assert np.linalg.norm(out - ref) / np.linalg.norm(ref) < 1e-5, name
        classical = us.ClassicalCB(fwd, n_iter=5).fit().predict(X)
        assert np.linalg.norm(ref - classical) > 1e-3 * np.linalg.norm(classical)


def test_graph_model_started_from_pointwise_weights_computes_the_same(small_fwd):
    mlp = us.UnfoldedSBLRegressor(small_fwd, correction="mlp", n_layers=5,
                                  max_epochs=0).fit_simulated()
    torch.manual_seed(1)
    with torch.no_grad():
        for p in mlp.network_.parameters():
            p.add_(0.3 * torch.randn_like(p))
    graph = us.UnfoldedSBLRegressor(small_fwd, correction="graph", n_layers=5,
                                    max_epochs=0).fit_simulated()
    graph.network_.load_state_dict(pointwise_to_graph(mlp.network_.state_dict()))
    X = us.simulate(small_fwd, 3, random_state=2, n_times=10).sensors
    np.testing.assert_allclose(graph.predict(X), mlp.predict(X), rtol=1e-10, atol=1e-12)


def test_graph_network_without_neighbours_says_what_it_needs(small_fwd):
    net = _graph_network(small_fwd)
    Y, _, _ = net._normalise(us.simulate(small_fwd, 1, random_state=0, n_times=5).sensors)
    with pytest.raises(ValueError, match="neighbours"):
        net.network_(Y, net._tensor(net.lead_field_))


def test_sparse_smoothing_equals_the_gathered_one_with_its_gradient():
    """torch smooths by a sparse product, exported graphs by a gather: same values
    and gradients, padding entries (weight 0, the source's own index) included."""
    index, weight, _ = mesh_neighbourhoods(us.load_forward("biosemi64-ico3"))
    assert (weight == 0).any()  # the padding is exercised
    index, weight = torch.as_tensor(index), torch.as_tensor(weight)
    rows = torch.randn(index.shape[0], 6, dtype=torch.float64, requires_grad=True)
    matrix = neighbour_matrix(index, weight, torch.float64)
    sparse = _smooth_rows(rows, matrix)
    gathered = _smooth_rows(rows, (index, weight))
    torch.testing.assert_close(sparse, gathered, rtol=1e-12, atol=1e-14)
    # mesh_neighbourhoods' own triple (index, weight, distance) smooths by the gather
    distance = torch.ones_like(weight)
    torch.testing.assert_close(_smooth_rows(rows, (index, weight, distance)), gathered)
    probe = torch.randn_like(sparse)
    (grad_sparse,) = torch.autograd.grad((sparse * probe).sum(), rows)
    (grad_gathered,) = torch.autograd.grad((gathered * probe).sum(), rows)
    torch.testing.assert_close(grad_sparse, grad_gathered, rtol=1e-12, atol=1e-14)
