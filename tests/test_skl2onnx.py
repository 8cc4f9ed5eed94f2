"""skl2onnx converts pipelines that end in the package's solvers."""

import numpy as np
import pytest
import torch
from sklearn.pipeline import make_pipeline

import unfolded_sbl as us

skl2onnx = pytest.importorskip("skl2onnx")
ort = pytest.importorskip("onnxruntime")


def _convert(pipe, n_channels):
    from skl2onnx.common.data_types import DoubleTensorType

    us.register_converters()
    onx = skl2onnx.to_onnx(pipe, initial_types=[("X", DoubleTensorType([None, n_channels,
                                                                          None]))])
    session = ort.InferenceSession(onx.SerializeToString())
    return lambda X: session.run(None, {"X": X})[0]


def _relative(a, b):
    return np.linalg.norm(a - b) / np.linalg.norm(b)


@pytest.fixture(scope="module")
def small():
    rng = np.random.default_rng(0)
    fwd = us.ForwardModel(rng.normal(size=(16, 60)) * 50, rng.normal(size=(60, 3)) * 0.03)
    return fwd, us.simulate(fwd, 3, n_times=12, random_state=1).sensors


@pytest.mark.parametrize("make", [lambda f: us.ClassicalCB(f, n_iter=8, tol=0),
                                  lambda f: us.SLORETA(f)], ids=["classicalcb", "sloreta"])
def test_pipeline_of_a_classical_solver_converts(small, make):
    fwd, X = small
    pipe = make_pipeline(make(fwd)).fit(X)
    assert _relative(_convert(pipe, 16)(X), pipe.predict(X)) < 1e-6


def test_pipeline_of_a_network_and_of_its_onnx_file_convert(small, tmp_path):
    fwd, X = small
    net = us.UnfoldedSBLRegressor(fwd, n_layers=4, max_epochs=0).fit(X, np.ones((3, 60, 12)))
    torch.manual_seed(0)
    with torch.no_grad():
        for p in net.network_.parameters():
            p.add_(0.05 * torch.randn_like(p))
    X = X.copy()
    X[1] = fwd.lead_field[:, :2] @ np.random.default_rng(2).normal(size=(2, 12))  # noise-free
    expected = net.predict(X)
    assert net.classical_fallback_.tolist() == [False, True, False]
    assert _relative(_convert(make_pipeline(net), 16)(X), expected) < 1e-5
    graph = us.OnnxSBLRegressor(us.export_onnx(net, tmp_path / "net.onnx"), forward=fwd).fit()
    assert _relative(_convert(make_pipeline(graph), 16)(X), expected) < 1e-5


def test_known_noise_models_and_2d_inputs_are_refused_clearly(small):
    from skl2onnx.common.data_types import DoubleTensorType

    fwd, X = small
    us.register_converters()
    known = make_pipeline(us.ClassicalCB(fwd, noise="known", n_iter=4, tol=0)).fit(X)
    with pytest.raises(ValueError, match="noise_var"):
        skl2onnx.to_onnx(known, initial_types=[("X", DoubleTensorType([None, 16, None]))])
    flat = make_pipeline(us.ClassicalCB(fwd, n_iter=4, tol=0)).fit(X)
    with pytest.raises(ValueError, match="n_times"):
        skl2onnx.to_onnx(flat, initial_types=[("X", DoubleTensorType([None, 16]))])
