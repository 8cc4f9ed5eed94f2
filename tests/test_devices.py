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
                                           device=device).fit(data.sensors, data.sources)]
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


def test_bench_gpu_dry_run_exercises_every_path(capsys):
    from benchmarks import bench_gpu

    bench_gpu.main(["--dry-run"])
    out = capsys.readouterr().out
    assert "CPU (dry run)" in out and "speed-up" in out and "samples/s" in out
