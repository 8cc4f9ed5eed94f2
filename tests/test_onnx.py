import logging
import pickle

import numpy as np
import pytest
import torch

import unfolded_sbl as us
from unfolded_sbl.export import export_onnx
from unfolded_sbl.onnx_runtime import STOP_SPINNING

pytest.importorskip("onnxruntime")


@pytest.fixture(scope="module")
def perturbed_net():
    """A 4-layer Deep CB (MLP) network on a 16-channel model with non-zero corrections."""
    rng = np.random.default_rng(0)
    fwd = us.ForwardModel(rng.normal(size=(16, 60)) * 50, rng.normal(size=(60, 3)) * 0.03)
    net = us.UnfoldedSBLRegressor(fwd, correction="mlp", n_layers=4, max_epochs=0).fit(
        np.ones((1, 16, 5)) + rng.normal(size=(1, 16, 5)), np.ones((1, 60, 5)))
    torch.manual_seed(0)
    with torch.no_grad():
        for p in net.network_.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return fwd, net


@pytest.fixture(scope="module")
def onnx_file(perturbed_net, tmp_path_factory):
    path = tmp_path_factory.mktemp("onnx") / "net.onnx"
    export_onnx(perturbed_net[1], path)
    return path


def _forward(n_channels, n_sources, seed):
    rng = np.random.default_rng(seed)
    return us.ForwardModel(rng.normal(size=(n_channels, n_sources)) * 50,
                           rng.normal(size=(n_sources, 3)) * 0.03)


@pytest.mark.parametrize("n_channels,n_sources,n_times", [(16, 60, 5), (12, 90, 7),
                                                          (20, 30, 3)])
def test_onnx_matches_torch_on_several_sizes(perturbed_net, onnx_file, n_channels, n_sources,
                                             n_times, tmp_path):
    _, net = perturbed_net
    fwd = _forward(n_channels, n_sources, n_channels)
    path = tmp_path / "net.pt"
    net.save(path)
    torch_est = us.UnfoldedSBLRegressor.load(path, forward=fwd)
    onnx_est = us.OnnxSBLRegressor(onnx_file, forward=fwd).fit()
    X = np.random.default_rng(1).normal(size=(3, n_channels, n_times)) * 1e-6
    ref, out = torch_est.predict(X), onnx_est.predict(X)
    assert np.linalg.norm(out - ref) / np.linalg.norm(ref) < 1e-4
    np.testing.assert_allclose(onnx_est.noise_var_, torch_est.noise_var_, rtol=1e-3)


@pytest.mark.parametrize("n_times", [4, 30])  # on the data, on its row space (T > N)
def test_onnx_batches_large_inputs(perturbed_net, onnx_file, n_times):
    fwd, _ = perturbed_net
    X = np.random.default_rng(2).normal(size=(7, 16, n_times))
    whole_est = us.OnnxSBLRegressor(onnx_file, forward=fwd, batch_size=64).fit()
    pieces_est = us.OnnxSBLRegressor(onnx_file, forward=fwd, batch_size=3).fit()
    whole, pieces = whole_est.predict(X), pieces_est.predict(X)
    np.testing.assert_allclose(pieces, whole, rtol=1e-5, atol=1e-6 * np.abs(whole).max())
    for name in ("source_var_", "noise_var_"):
        np.testing.assert_allclose(getattr(pieces_est, name), getattr(whole_est, name),
                                   rtol=1e-5, atol=1e-12)


def test_provider_fallback_is_reported(perturbed_net, onnx_file, caplog):
    fwd, _ = perturbed_net
    with caplog.at_level(logging.INFO, logger="unfolded_sbl"):
        est = us.OnnxSBLRegressor(onnx_file, forward=fwd).fit()
    assert est.provider_ in est.session_.get_providers()
    assert "running on" in caplog.text
    if not torch.cuda.is_available():
        assert est.provider_ == "CPUExecutionProvider"
    cpu = us.OnnxSBLRegressor(onnx_file, forward=fwd, providers=["CPUExecutionProvider"],
                              intra_op_num_threads=1).fit()
    assert cpu.provider_ == "CPUExecutionProvider"


def test_sessions_open_with_the_library_options(perturbed_net, onnx_file):
    """Memory-pattern reuse off (its planner costs ~1 ms per node when a session
    opens: 11-20 s for a shipped 25-layer graph), threads as asked and parked when
    a call returns, and the results unchanged against onnxruntime's own default."""
    import onnxruntime as ort

    fwd, _ = perturbed_net
    est = us.OnnxSBLRegressor(onnx_file, forward=fwd, intra_op_num_threads=1).fit()
    options = est.session_.get_session_options()
    assert options.enable_mem_reuse is False
    assert options.intra_op_num_threads == 1
    assert options.get_session_config_entry(STOP_SPINNING) == "1"
    X = np.random.default_rng(5).normal(size=(9, 16, 6))
    ours = est.predict(X)
    est.session_ = ort.InferenceSession(str(onnx_file), providers=["CPUExecutionProvider"])
    np.testing.assert_allclose(est.predict(X), ours, rtol=1e-10, atol=1e-12)


def test_onnx_graph_is_valid_and_pickles(perturbed_net, onnx_file):
    import onnx

    model = onnx.load(str(onnx_file))
    onnx.checker.check_model(model)
    assert any(op.domain == "com.microsoft" for op in model.opset_import)
    fwd, _ = perturbed_net
    est = us.OnnxSBLRegressor(onnx_file, forward=fwd).fit()
    X = np.random.default_rng(3).normal(size=(2, 16, 4))
    back = pickle.loads(pickle.dumps(est))
    np.testing.assert_array_equal(back.predict(X), est.predict(X))


def test_corrupted_and_truncated_onnx(onnx_file, tmp_path, perturbed_net):
    fwd, _ = perturbed_net
    raw = onnx_file.read_bytes()
    (tmp_path / "trunc.onnx").write_bytes(raw[: len(raw) // 3])
    with pytest.raises(ValueError, match="corrupted"):
        us.OnnxSBLRegressor(tmp_path / "trunc.onnx", forward=fwd).fit()
    (tmp_path / "junk.onnx").write_bytes(b"\x00garbage" * 10)
    with pytest.raises(ValueError, match="corrupted"):
        us.OnnxSBLRegressor(tmp_path / "junk.onnx", forward=fwd).fit()
    with pytest.raises(FileNotFoundError):
        us.OnnxSBLRegressor(tmp_path / "none.onnx", forward=fwd).fit()


def test_onnx_bad_inputs(perturbed_net, onnx_file):
    fwd, _ = perturbed_net
    est = us.OnnxSBLRegressor(onnx_file, forward=fwd).fit()
    with pytest.raises(ValueError, match="X has 5 channels"):
        est.predict(np.ones((1, 5, 3)))
    with pytest.raises(ValueError, match="noise_var is only used"):
        est.predict(np.ones((1, 16, 3)), noise_var=np.ones((1, 16)))
    zero = est.predict(np.zeros((1, 16, 3)))
    assert np.all(zero == 0)


def test_onnx_bias_model_refuses_other_sizes(tmp_path):
    fwd = _forward(16, 60, 0)
    net = us.UnfoldedSBLRegressor(fwd, correction="bias", noise_correction="bias", n_layers=3,
                                  max_epochs=0).fit(np.random.default_rng(0).normal(size=(1, 16, 4)),
                                                    np.ones((1, 60, 4)))
    export_onnx(net, tmp_path / "bias.onnx")
    assert us.OnnxSBLRegressor(tmp_path / "bias.onnx", forward=fwd).fit().predict(
        np.ones((1, 16, 2)) + np.arange(16)[None, :, None]).shape == (1, 60, 2)
    with pytest.raises(ValueError, match="tied to 16 channels x 60 sources"):
        us.OnnxSBLRegressor(tmp_path / "bias.onnx", forward=_forward(12, 60, 1)).fit()


def test_known_noise_model_export(tmp_path):
    fwd = _forward(16, 60, 0)
    rng = np.random.default_rng(0)
    net = us.UnfoldedSBLRegressor(fwd, correction="mlp", learn_noise=False, n_layers=3,
                                  max_epochs=0).fit(rng.normal(size=(2, 16, 4)),
                                                    np.ones((2, 60, 4)),
                                                    noise_var=np.ones((2, 16)))
    export_onnx(net, tmp_path / "known.onnx")
    est = us.OnnxSBLRegressor(tmp_path / "known.onnx", forward=fwd).fit()
    X, noise = rng.normal(size=(2, 16, 4)), rng.uniform(0.5, 1, size=(2, 16))
    ref = net.predict(X, noise_var=noise)
    out = est.predict(X, noise_var=noise)
    assert np.linalg.norm(out - ref) / np.linalg.norm(ref) < 1e-4
    with pytest.raises(ValueError, match="known noise"):
        est.predict(X)


@pytest.mark.parametrize("attention_keys", [None, 8])
def test_attention_model_export_matches_torch(tmp_path, attention_keys):
    """Attention runs through scaled_dot_product_attention in torch and through the
    generic (exportable) path inside the ONNX export: the two agree, for global
    attention and for attention over the top-k sources, at two source counts."""
    fwd = _forward(16, 60, 0)
    rng = np.random.default_rng(3)
    net = us.UnfoldedSBLRegressor(fwd, correction="attention", n_layers=3, max_epochs=0,
                                  attention_keys=attention_keys).fit(
        rng.normal(size=(1, 16, 4)), np.ones((1, 60, 4)))
    torch.manual_seed(1)
    with torch.no_grad():
        for p in net.network_.parameters():
            p.add_(0.1 * torch.randn_like(p))
    export_onnx(net, tmp_path / "attn.onnx")
    other = _forward(12, 90, 4)  # attention, like the MLP, runs on any size
    path = tmp_path / "attn.pt"
    net.save(path)
    ref_est = us.UnfoldedSBLRegressor.load(path, forward=other)
    onnx_est = us.OnnxSBLRegressor(tmp_path / "attn.onnx", forward=other).fit()
    X = rng.normal(size=(3, 12, 5)) * 1e-6
    ref, out = ref_est.predict(X), onnx_est.predict(X)
    assert np.linalg.norm(out - ref) / np.linalg.norm(ref) < 1e-4
    # and the corrections are not zero, so the attention path was exercised
    layers = ref_est.predict_trajectory(X)
    assert np.abs(layers[0]["source_correction"]).max() > 1e-3


@pytest.mark.parametrize("exporting", [False, True])
def test_attention_written_out_equals_torch_multihead_attention(monkeypatch, exporting):
    """SourceAttention's batch-first attention (fused kernel in torch; products and
    a softmax while exporting) computes nn.MultiheadAttention with the same weights."""
    from unfolded_sbl.network import SourceAttention

    torch.manual_seed(0)
    module = SourceAttention(5).double()
    h = torch.randn(3, 40, module.attn.embed_dim, dtype=torch.float64)
    keys = h[:, :7]
    expected, _ = module.attn(h, keys, keys, need_weights=False)
    monkeypatch.setattr(torch.onnx, "is_in_onnx_export", lambda: exporting)
    torch.testing.assert_close(module._attend(h, keys), expected, rtol=1e-10, atol=1e-12)


def test_predict_before_fit_says_what_to_do(onnx_file):
    from sklearn.exceptions import NotFittedError

    with pytest.raises(NotFittedError, match="call fit"):
        us.OnnxSBLRegressor(onnx_file).predict(np.ones((1, 16, 5)))


def test_pretrained_path_gives_the_installed_onnx_file():
    path = us.pretrained_path("deep-cb-joint", "onnx")
    assert path.exists() and path.suffix == ".onnx"
    est = us.OnnxSBLRegressor(path).fit()
    assert est.n_sources_ == 1284


def test_onnx_takes_the_pair_form_from_the_pair_batch_size(perturbed_net, onnx_file):
    """One file holds both product forms, chosen by batch size as torch does."""
    import onnx

    from unfolded_sbl._champagne import PAIR_BATCH_MIN

    fwd, net = perturbed_net
    model = onnx.load(str(onnx_file))
    branches = {a.g.name for n in model.graph.node if n.op_type == "If" for a in n.attribute}
    assert {"classical_graph", "learned_only"} <= branches  # the fallback, then
    inner = {a.g.name for n in model.graph.node if n.op_type == "If" for a in n.attribute}
    assert {"paired_graph", "single_graph"} <= inner  # the two product forms
    est = us.OnnxSBLRegressor(onnx_file, forward=fwd).fit()
    rng = np.random.default_rng(3)
    for batch in (PAIR_BATCH_MIN - 1, PAIR_BATCH_MIN, 2 * PAIR_BATCH_MIN + 1):
        X = rng.normal(size=(batch, 16, 6))
        ref, out = net.predict(X), est.predict(X)
        assert np.linalg.norm(out - ref) / np.linalg.norm(ref) < 1e-5, batch
