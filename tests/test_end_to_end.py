"""The DeepSIF-like end-to-end baseline."""

import numpy as np
import pytest
import torch

import unfolded_sbl as us


@pytest.fixture(scope="module")
def small_data(small_fwd):
    return us.simulate(small_fwd, 64, random_state=3, n_patches=(1, 3), n_times=20)


def test_training_lowers_the_loss_and_predicts_sources(small_fwd, small_data):
    est = us.EndToEndRegressor(small_fwd, hidden=32, max_epochs=6, steps_per_epoch=10,
                               batch_size=16, learning_rate=3e-3, random_state=0)
    est.fit(small_data.sensors, small_data.sources)
    losses = [h["loss"] for h in est.history_]
    assert losses[-1] < 0.9 * losses[0]
    pred = est.predict(small_data.sensors[:4])
    assert pred.shape == small_data.sources[:4].shape
    # scale-equivariant: volts or microvolts give the same map up to the factor
    np.testing.assert_allclose(est.predict(1e6 * small_data.sensors[:4]), 1e6 * pred,
                               rtol=1e-4, atol=1e-4 * np.abs(1e6 * pred).max())
    # any number of time samples (the temporal module is convolutional)
    assert est.predict(small_data.sensors[:2, :, :7]).shape == (2, 60, 7)


def test_fit_simulated_is_reproducible(small_fwd):
    kwargs = dict(hidden=16, max_epochs=1, steps_per_epoch=2, batch_size=4, random_state=1,
                  simulator_params={"n_times": 10})
    X = us.simulate(small_fwd, 2, random_state=0, n_times=10).sensors
    a = us.EndToEndRegressor(small_fwd, **kwargs).fit_simulated().predict(X)
    b = us.EndToEndRegressor(small_fwd, **kwargs).fit_simulated().predict(X)
    np.testing.assert_array_equal(a, b)


def test_input_errors(small_fwd, small_data):
    est = us.EndToEndRegressor(small_fwd, hidden=8, max_epochs=1, steps_per_epoch=1,
                               batch_size=2, random_state=0)
    with pytest.raises(ValueError, match="y must have shape"):
        est.fit(small_data.sensors, small_data.sources[:, :10])
    est.fit(small_data.sensors, small_data.sources)
    with pytest.raises(ValueError, match="16"):
        est.predict(small_data.sensors[:, :10])
    with pytest.raises(ValueError, match="kernel_size"):
        us.EndToEndRegressor(small_fwd, kernel_size=4).fit_simulated()
    zero = est.predict(np.zeros((1, 16, 20)))
    assert np.all(zero == 0)


def test_end_to_end_trains_through_the_unfolded_networks_trainer(fwd, monkeypatch):
    """One training loop: EndToEndRegressor's steps are the Trainer's, with its history
    records and its checkpoint-free joint phase."""
    from unfolded_sbl import training

    runs = []
    original = training.Trainer.run

    def spy(self):
        runs.append(self.s)
        return original(self)

    monkeypatch.setattr(training.Trainer, "run", spy)
    net = us.EndToEndRegressor(fwd, hidden=8, max_epochs=2, steps_per_epoch=2, batch_size=4,
                               random_state=0).fit_simulated()
    assert len(runs) == 1 and runs[0].compress is False and runs[0].progressive_steps == 0
    assert [r["epoch"] for r in net.history_] == [0, 1]
    assert all(r["phase"] == "joint" and np.isfinite(r["loss"]) for r in net.history_)
    again = us.EndToEndRegressor(fwd, hidden=8, max_epochs=2, steps_per_epoch=2, batch_size=4,
                                 random_state=0).fit_simulated()
    for a, b in zip(net.network_.parameters(), again.network_.parameters()):
        assert torch.equal(a, b)  # seeded: the same weights
