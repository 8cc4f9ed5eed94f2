"""The exported file is the solver: plain onnxruntime, volts in and A m out, with
the regime check and its classical fallback inside the graph."""

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import unfolded_sbl as us
from unfolded_sbl.export import read_contract
from unfolded_sbl.pretrained import model_card
from unfolded_sbl.regime import REGIME_FLOOR_DB, regime_level_db

ort = pytest.importorskip("onnxruntime")


def _exact_level(Y, referenced=True):
    """The level from the eigenvalues themselves (what the subspace iteration estimates)."""
    n_channels, n_times = Y.shape[1:]
    rank = max(1, min(n_channels - int(referenced), n_times))
    eig = np.sort(np.linalg.eigvalsh(Y @ Y.transpose(0, 2, 1)), axis=1)[:, ::-1][:, :rank]
    lower = eig[:, rank // 2:].mean(axis=1)
    return 10 * np.log10(np.maximum(lower / eig.mean(axis=1), 1e-300))


@pytest.mark.parametrize("snr_db", [(-10, 0), (10, 20), (30, 40), (40, 60)])
@pytest.mark.parametrize("n_times", [5, 20, 63, 200])
def test_regime_level_follows_the_eigenvalues(snr_db, n_times):
    fwd = us.load_forward()
    data = us.simulate(fwd, 8, n_times=n_times, snr_db=snr_db, random_state=n_times)
    Y = data.sensors - data.sensors.mean(axis=1, keepdims=True)
    np.testing.assert_allclose(regime_level_db(Y), _exact_level(Y), atol=1.0)


@settings(max_examples=25, deadline=None)
@given(n_channels=st.integers(6, 24), n_times=st.integers(1, 40), rank=st.integers(1, 4),
       seed=st.integers(0, 2 ** 16))
def test_regime_level_puts_low_rank_data_below_the_floor(n_channels, n_times, rank, seed):
    """Exactly low-rank data (rank below half the eigenvalues that can be non-zero) read
    far below the floor, whatever their size and scale; full-rank noise far above."""
    rng = np.random.default_rng(seed)
    scale = 10.0 ** rng.uniform(-8, 2)
    Y = scale * rng.normal(size=(1, n_channels, rank)) @ rng.normal(size=(1, rank, n_times))
    Y -= Y.mean(axis=1, keepdims=True)
    possible = min(n_channels - 1, n_times)
    if rank < possible // 2:
        assert regime_level_db(Y)[0] < REGIME_FLOOR_DB - 30
    noise = scale * rng.normal(size=(1, n_channels, n_times))
    noise -= noise.mean(axis=1, keepdims=True)
    assert regime_level_db(noise)[0] > REGIME_FLOOR_DB + 20
    assert np.isfinite(regime_level_db(np.zeros((1, n_channels, n_times)))[0])


@pytest.fixture(scope="module")
def tiny_net():
    """A briefly perturbed 6-layer Deep CB on a 20-channel forward model."""
    rng = np.random.default_rng(0)
    fwd = us.ForwardModel(rng.normal(size=(20, 80)) * 50, rng.normal(size=(80, 3)) * 0.03)
    net = us.UnfoldedSBLRegressor(fwd, correction="mlp", n_layers=6, max_epochs=0).fit(
        rng.normal(size=(1, 20, 12)), np.ones((1, 80, 12)))
    torch.manual_seed(0)
    with torch.no_grad():
        for p in net.network_.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return fwd, net


def _mixed_batch(fwd, n=6, n_times=16, seed=0):
    """Noisy samples in volts around a noise-free one (left to the classical updates)."""
    rng = np.random.default_rng(seed)
    sources = np.zeros((n, fwd.n_sources, n_times))
    sources[:, rng.integers(0, fwd.n_sources, size=3)] = rng.normal(size=(n, 3, n_times)) * 1e-8
    clean = np.einsum("cs,nst->nct", fwd.lead_field, sources)
    noisy = clean + 0.2 * clean.std() * rng.normal(size=clean.shape)
    noisy[1] = clean[1]
    return noisy + 3e-6  # an offset: the file references the data itself


def test_plain_onnxruntime_gives_the_wrapper_and_torch_estimate(tiny_net, tmp_path):
    fwd, net = tiny_net
    path = us.export_onnx(net, tmp_path / "net.onnx", name="tiny")
    X = _mixed_batch(fwd)
    session = ort.InferenceSession(path)
    assert [i.name for i in session.get_inputs()] == ["sensors", "lead_field"]
    sources, source_var, noise_var, fallback = session.run(
        None, {"sensors": X, "lead_field": fwd.lead_field})
    wrapper = us.OnnxSBLRegressor(path, forward=fwd).fit()
    expected = net.predict(X)
    np.testing.assert_array_equal(fallback, net.classical_fallback_)
    assert fallback.tolist() == [False, True, False, False, False, False]
    for out in (sources, wrapper.predict(X)):
        assert np.linalg.norm(out - expected) / np.linalg.norm(expected) < 1e-5
    np.testing.assert_allclose(source_var, net.source_var_, rtol=1e-5, atol=1e-30)
    np.testing.assert_allclose(noise_var, net.noise_var_, rtol=1e-5)
    np.testing.assert_array_equal(wrapper.classical_fallback_, fallback)
    contract = read_contract(path)
    assert contract["model"] == "tiny" and contract["inputs"]["sensors"]["units"].startswith("V")
    assert contract["outputs"]["sources"]["units"] == "A m"
    assert contract["settings"]["regime_check"] is True


def test_non_finite_values_through_the_file_alone_give_finite_estimates(tiny_net, tmp_path):
    fwd, net = tiny_net
    path = us.export_onnx(net, tmp_path / "net.onnx", embed_forward=True)
    session = ort.InferenceSession(path)
    X = _mixed_batch(fwd)
    holes, zeroed = X.copy(), X.copy()
    holes[0, 4, 3], holes[2, 7, :] = np.nan, -np.inf
    zeroed[0, 4], zeroed[2, 7] = 0.0, 0.0
    out = session.run(None, {"sensors": holes})
    assert all(np.all(np.isfinite(o)) for o in out[:3])
    np.testing.assert_allclose(out[0], session.run(None, {"sensors": zeroed})[0], rtol=1e-10)
    with pytest.raises(ValueError, match="finite|NaN"):  # the Python API refuses them
        us.OnnxSBLRegressor(path, forward=fwd).fit().predict(holes)


def test_settings_change_the_fallback_inside_the_file(tiny_net, tmp_path):
    """regime_check=False and a density ceiling reach the graph's constants."""
    fwd, net = tiny_net
    path = us.export_onnx(net, tmp_path / "net.onnx")
    X = _mixed_batch(fwd)
    off = us.OnnxSBLRegressor(path, forward=fwd, regime_check=False).fit()
    off.predict(X)
    assert not off.classical_fallback_.any()
    dense = us.OnnxSBLRegressor(path, forward=fwd, density_ceiling=1e-6).fit()
    dense.predict(X)
    assert dense.classical_fallback_.all()  # every estimate is denser than that
    net.set_params(density_ceiling=1e-6)
    try:
        expected = net.predict(X)
    finally:
        net.set_params(density_ceiling=None)
    out = dense.predict(X)
    assert np.linalg.norm(out - expected) / np.linalg.norm(expected) < 1e-5


def test_embedded_forward_file_takes_sensors_only(tiny_net, tmp_path):
    fwd, net = tiny_net
    path = us.export_onnx(net, tmp_path / "net.onnx", embed_forward=True)
    session = ort.InferenceSession(path)
    assert [i.name for i in session.get_inputs()] == ["sensors"]
    X = _mixed_batch(fwd, seed=1)
    sources = session.run(["sources"], {"sensors": X})[0]
    expected = net.predict(X)
    assert np.linalg.norm(sources - expected) / np.linalg.norm(expected) < 1e-5
    other = us.ForwardModel(fwd.lead_field[:, :70], fwd.positions[:70])
    with pytest.raises(ValueError, match="embeds the forward model"):
        us.OnnxSBLRegressor(path, forward=other).fit()


def test_known_noise_file_takes_noise_in_volts(tmp_path):
    rng = np.random.default_rng(1)
    fwd = us.ForwardModel(rng.normal(size=(12, 50)) * 50, rng.normal(size=(50, 3)) * 0.03)
    net = us.UnfoldedSBLRegressor(fwd, correction="mlp", n_layers=4, learn_noise=False,
                                  max_epochs=0).fit(rng.normal(size=(1, 12, 12)),
                                                    np.ones((1, 50, 12)),
                                                    noise_var=np.ones((1, 12)))
    path = us.export_onnx(net, tmp_path / "known.onnx")
    X = rng.normal(size=(3, 12, 15)) * 1e-6
    noise = np.full((3, 12), 1e-14)
    plain = ort.InferenceSession(path).run(["sources"], {
        "sensors": X, "lead_field": fwd.lead_field, "noise_var_in": noise})[0]
    expected = net.predict(X, noise_var=noise)
    assert np.linalg.norm(plain - expected) / np.linalg.norm(expected) < 1e-5


def test_files_without_a_contract_are_refused_with_the_fix(tmp_path, tiny_net):
    import onnx

    fwd, net = tiny_net
    path = us.export_onnx(net, tmp_path / "net.onnx")
    model = onnx.load(path)
    kept = [p for p in model.metadata_props if p.key != "unfolded_sbl.contract"]
    del model.metadata_props[:]
    model.metadata_props.extend(kept)
    onnx.save(model, tmp_path / "old.onnx")
    with pytest.raises(ValueError, match="export it again"):
        us.OnnxSBLRegressor(tmp_path / "old.onnx", forward=fwd).fit()


@pytest.mark.parametrize("name", us.list_pretrained())
def test_shipped_files_carry_their_contract_and_weights_hash(name):
    contract = read_contract(us.pretrained_path(name, "onnx"))
    card = model_card(name)
    assert contract["model"] == name
    weights = contract["provenance"]["weights"]
    assert contract["provenance"]["weights_sha256"] == card["files"][weights]["sha256"]
    assert contract["outputs"]["classical_fallback"]


def test_cli_export_embeds_the_forward_model_when_asked(tmp_path):
    from unfolded_sbl.cli import main

    net = us.UnfoldedSBLRegressor("biosemi64-ico3", n_layers=2, max_epochs=0).fit_simulated()
    net.save(tmp_path / "net.pt")
    out = tmp_path / "net.onnx"
    assert main(["export", str(tmp_path / "net.pt"), str(out), "--forward", "biosemi64-ico3",
                 "--embed-forward"]) == 0
    session = ort.InferenceSession(str(out))
    assert [i.name for i in session.get_inputs()] == ["sensors"]
    assert read_contract(out)["forward"]["name"] == "biosemi64-ico3"
