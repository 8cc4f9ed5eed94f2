"""device=: every torch path runs on "cpu", and a missing GPU is a clear error."""

import numpy as np
import pytest
import torch

import unfolded_sbl as us
from unfolded_sbl._validation import check_device

NO_CUDA = not torch.cuda.is_available()


def test_check_device():
    assert check_device("cpu") == torch.device("cpu")
    with pytest.raises(ValueError, match="not a device"):
        check_device("gpu0")
    with pytest.raises(ValueError, match="only 'cpu' and 'cuda"):
        check_device("meta")
    with pytest.raises(TypeError, match="device must be a string"):
        check_device(0)


@pytest.mark.skipif(not NO_CUDA, reason="a GPU is present")
@pytest.mark.parametrize("device", ["cuda", "cuda:1"])
def test_cuda_without_a_gpu_is_a_clear_error(small_fwd, device):
    data = us.simulate(small_fwd, 2, random_state=0, n_times=5)
    makers = [lambda: us.ClassicalCB(small_fwd, device=device).fit(),
              lambda: us.UnfoldedSBLRegressor(small_fwd, max_epochs=0,
                                              device=device).fit_simulated(),
              lambda: us.EndToEndRegressor(small_fwd, hidden=4, max_epochs=0,
                                           device=device).fit(data.sensors, data.sources),
              lambda: us.Simulator(small_fwd, device=device)]
    for make in makers:
        with pytest.raises(ValueError, match="torch sees no CUDA GPU"):
            make()


def test_cpu_device_paths_match_the_default(small_fwd):
    data = us.simulate(small_fwd, 3, random_state=0, n_times=8)
    ref = us.ClassicalCB(small_fwd, n_iter=5).fit().predict(data.sensors)
    out = us.ClassicalCB(small_fwd, n_iter=5, device="cpu").fit().predict(data.sensors)
    np.testing.assert_array_equal(out, ref)
    net = us.UnfoldedSBLRegressor(small_fwd, n_layers=3, max_epochs=1, steps_per_epoch=1,
                                  progressive_steps=0, batch_size=2, n_val=2, device="cpu",
                                  simulator_params={"n_times": 8}, random_state=0)
    net.fit_simulated()
    assert next(net.network_.parameters()).device.type == "cpu"
    assert net.predict(data.sensors).shape == ref.shape
    e2e = us.EndToEndRegressor(small_fwd, hidden=4, max_epochs=1, steps_per_epoch=1,
                               batch_size=2, device="cpu", dtype="float64", random_state=0)
    e2e.fit(data.sensors, data.sources)
    assert next(e2e.network_.parameters()).dtype == torch.float64
    assert np.all(np.isfinite(e2e.predict(data.sensors)))


@pytest.mark.skipif(NO_CUDA, reason="no GPU here")
def test_cuda_matches_cpu(small_fwd):  # runs on a GPU machine only
    data = us.simulate(small_fwd, 3, random_state=0, n_times=8)
    ref = us.ClassicalCB(small_fwd, n_iter=5).fit().predict(data.sensors)
    out = us.ClassicalCB(small_fwd, n_iter=5, device="cuda").fit().predict(data.sensors)
    np.testing.assert_allclose(out, ref, rtol=1e-6, atol=1e-12 * np.abs(ref).max())
    net = us.UnfoldedSBLRegressor(small_fwd, n_layers=5, max_epochs=0, device="cuda")
    np.testing.assert_allclose(net.fit_simulated().predict(data.sensors), us.ClassicalCB(
        small_fwd, n_iter=5).fit().predict(data.sensors), rtol=1e-5,
        atol=1e-10 * np.abs(ref).max())
    params = dict(n_times=(5, 30), noise_color="mixed", bad_channel_prob=0.5)
    on_gpu = us.Simulator(small_fwd, random_state=3, device="cuda", **params).draw(4)
    on_host = us.Simulator(small_fwd, random_state=3, **params).draw(4)
    assert on_gpu.sensors.is_cuda
    np.testing.assert_allclose(on_gpu.numpy().sensors, on_host.sensors, rtol=1e-10,
                               atol=1e-12 * np.abs(on_host.sensors).max())


def _small_ensemble(fwd, n_members=3):
    from unfolded_sbl.head_models import HeadModelEnsemble

    rng = np.random.default_rng(1)
    members = rng.normal(size=(n_members,) + fwd.lead_field.shape + (3,)) * 50.0
    return HeadModelEnsemble(members.astype(np.float32), [{}] * n_members, "small", 20.0)


def test_simulator_on_a_device_draws_the_host_samples(small_fwd, tmp_path):
    """The same seed gives the same samples whether they are assembled for the host
    (numpy) or on a device (torch tensors there), through every optional feature."""
    params = dict(n_patches=(1, 4), n_times=(5, 30), log_uniform=True, noise_color="mixed",
                  noise_free_prob=0.3, bad_channel_prob=0.5,
                  head_models=_small_ensemble(small_fwd))
    host = us.Simulator(small_fwd, random_state=3, **params)
    device = us.Simulator(small_fwd, random_state=3, device="cpu", **params)
    for _ in range(3):
        a, b = host.draw(5), device.draw(5)
        assert isinstance(a.sensors, np.ndarray)
        assert torch.is_tensor(b.sensors) and b.sensors.device.type == "cpu"
        for field in ("sensors", "sources", "noise_var"):
            np.testing.assert_array_equal(getattr(b, field).numpy(), getattr(a, field))
        np.testing.assert_array_equal(b.n_active, a.n_active)
    b.save(tmp_path / "device.npz")
    np.testing.assert_allclose(us.SimulatedData.load(tmp_path / "device.npz").sensors,
                               a.sensors, rtol=1e-6)


def test_device_batches_are_normalised_like_host_ones(small_fwd):
    net = us.UnfoldedSBLRegressor(small_fwd, n_layers=3, max_epochs=0, learn_noise=False,
                                  simulator_params={"n_times": 6}).fit_simulated()
    data = us.Simulator(small_fwd, random_state=0, device="cpu", n_times=6).draw(3)
    tensors = (data.sensors, data.sources, data.noise_var)
    on_host = net._normalise(*(t.numpy() for t in tensors))
    on_device = net._normalise(*tensors)
    assert all(t.dtype == net.torch_dtype_ for t in on_device)
    for a, b in zip(on_host, on_device):
        torch.testing.assert_close(b, a, rtol=1e-12, atol=0)
    # what the network sees: average-referenced data at unit RMS, sources and noise
    # in the same units (lead field scaled to trace(L L^T) = N - 1)
    X, y, noise = (t.numpy() for t in tensors)
    referenced = X - X.mean(axis=1, keepdims=True)
    scale = np.sqrt(np.mean(referenced ** 2, axis=(1, 2)))
    expected = (referenced / scale[:, None, None],
                y / (scale / net.lead_field_scale_)[:, None, None], noise / scale[:, None] ** 2)
    for value, reference in zip(on_device, expected):
        np.testing.assert_allclose(value.numpy(), reference, rtol=1e-12, atol=0)
    with pytest.raises(ValueError, match="all-zero"):
        net._normalise(torch.zeros(1, small_fwd.n_channels, 4))
    with pytest.raises(ValueError, match="shape"):
        net._normalise(torch.ones(1, small_fwd.n_channels + 1, 4))


def test_bench_gpu_dry_run_exercises_every_path(capsys):
    from benchmarks import bench_gpu

    bench_gpu.main(["--dry-run"])
    out = capsys.readouterr().out
    assert "CPU (dry run)" in out and "speed-up" in out and "samples/s" in out
    assert "robust training simulator" in out and "on the device (cpu)" in out


def test_padded_patch_products_equal_the_per_sample_ones():
    """The GPU assembly of the simulator's sources (one batched product over patches
    zero-padded per sample) is the per-sample sum the CPU path computes."""
    from unfolded_sbl.simulate import padded_patches

    rng = np.random.default_rng(0)
    n_active = np.array([1, 4, 2])
    kernels, courses = rng.random((7, 30)), rng.normal(size=(7, 9))
    batched = np.swapaxes(padded_patches(kernels, n_active), 1, 2) @ padded_patches(
        courses, n_active)
    bounds = np.concatenate([[0], np.cumsum(n_active)])
    for i in range(3):
        patch = slice(bounds[i], bounds[i + 1])
        np.testing.assert_allclose(batched[i], kernels[patch].T @ courses[patch], rtol=1e-12)
