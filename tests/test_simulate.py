import numpy as np
import pytest

import unfolded_sbl as us
from unfolded_sbl.simulate import Simulator


def test_shapes_units_and_reproducibility(fwd):
    a = us.simulate(fwd, 4, random_state=3)
    b = us.simulate(fwd, 4, random_state=3)
    c = us.simulate(fwd, 4, random_state=4)
    assert a.sensors.shape == (4, 64, 100)
    assert a.sources.shape == (4, 1284, 100)
    assert a.noise_var.shape == (4, 64)
    np.testing.assert_array_equal(a.sensors, b.sensors)
    assert not np.allclose(a.sensors, c.sensors)
    # microvolt-scale sensors, nAm-scale sources
    assert 1e-7 < a.sensors.std() < 1e-4
    assert 1e-11 < np.abs(a.sources).max() < 1e-6


def test_patch_count_and_snr(fwd):
    sim = Simulator(fwd, n_patches=(2, 2), snr_db=(10, 10), random_state=0)
    data = sim.draw(6)
    assert np.all(data.n_active == 2)
    clean = np.einsum("cs,nst->nct", fwd.lead_field, data.sources)
    noise = data.sensors - clean
    power = np.mean(clean ** 2, axis=(1, 2))
    # per-sensor noise variance = signal power / 10^(snr/10)
    np.testing.assert_allclose(data.noise_var, np.repeat(power[:, None] / 10, 64, 1))
    ratio = noise.var(axis=2) / data.noise_var
    assert 0.8 < ratio.mean() < 1.2


def test_band_limited_time_courses(fwd):
    data = Simulator(fwd, n_patches=1, bands=("beta",), random_state=0).draw(4)
    course = data.sources[0][np.argmax(np.abs(data.sources[0]).sum(1))]
    spectrum = np.abs(np.fft.rfft(course)) ** 2
    freqs = np.fft.rfftfreq(100, 1 / 100)
    in_band = spectrum[(freqs >= 12) & (freqs <= 30)].sum()
    assert in_band / spectrum.sum() > 0.8


def test_stream_and_file(tmp_path, fwd):
    sim = Simulator(fwd, random_state=0)
    batches = list(sim.batches(3, n_batches=2))
    assert len(batches) == 2 and all(len(b) == 3 for b in batches)
    data = us.simulate_to_file(tmp_path / "d.npz", fwd, n_samples=5, random_state=1,
                               batch_size=2)
    back = us.SimulatedData.load(tmp_path / "d.npz")
    np.testing.assert_allclose(back.sensors, data.sensors, rtol=1e-6)
    assert back.sources.shape == (5, 1284, 100)


@pytest.mark.parametrize("kwargs,match", [
    ({"n_patches": (5, 2)}, "n_patches"), ({"spread": -1.0}, "spread"),
    ({"snr_db": "high"}, "snr_db"), ({"bands": ("gamma",)}, "bands"),
    ({"n_times": 0}, "n_times")])
def test_bad_parameters(fwd, kwargs, match):
    with pytest.raises(ValueError, match=match):
        Simulator(fwd, **kwargs)


def test_bad_n_samples(fwd):
    with pytest.raises(ValueError, match="n_samples"):
        us.simulate(fwd, 0)
    with pytest.raises(ValueError, match="unknown forward model"):
        us.simulate("nope", 1)


def test_corrupted_dataset_file(tmp_path):
    (tmp_path / "x.npz").write_bytes(b"garbage")
    with pytest.raises(ValueError, match="cannot read simulated dataset"):
        us.SimulatedData.load(tmp_path / "x.npz")
