"""End-to-end deep baseline in the spirit of DeepSIF (Sun et al., PNAS 2022).

A network maps sensor data straight to sources: a spatial module (MLP over the
channels of every time point) followed by a residual temporal convolution and
a linear read-out to every source.  It learns the whole inverse from the
simulator, so its weights are tied to one cap and one source space: the
contrast with the unfolded networks, which keep the lead field as an input and
learn only corrections of a Bayesian update.
"""

from __future__ import annotations

import torch
from torch import nn

from ._base import _DTYPES
from ._network_base import _NetworkEstimator
from ._validation import check_device, check_finite_array, check_positive_int
from .simulate import Simulator
from .training import Trainer, TrainSettings


class SpatioTemporalNet(nn.Module):
    """(B, N, T) sensor data -> (B, M, T) sources."""

    def __init__(self, n_channels, n_sources, hidden=256, kernel_size=5):
        super().__init__()
        self.spatial = nn.Sequential(nn.Linear(n_channels, hidden), nn.ELU(),
                                     nn.Linear(hidden, hidden), nn.ELU())
        self.temporal = nn.Conv1d(hidden, hidden, kernel_size, padding=kernel_size // 2)
        self.readout = nn.Linear(hidden, n_sources)

    def forward(self, Y):
        h = self.spatial(Y.transpose(1, 2))                      # (B, T, H)
        h = h + nn.functional.elu(self.temporal(h.transpose(1, 2))).transpose(1, 2)
        return self.readout(h).transpose(1, 2)                   # (B, M, T)


class _OneLayer(nn.Module):
    """A :class:`SpatioTemporalNet` seen by the unfolded networks' :class:`Trainer`: one
    layer, no lead field, no classical counterpart."""

    n_layers = 1

    def __init__(self, network):
        super().__init__()
        self.network = network

    def forward(self, Y, lead_field=None, noise_var=None, **kwargs):
        return {"sources": self.network(Y), "intermediate": {}}


class EndToEndRegressor(_NetworkEstimator):
    """DeepSIF-like end-to-end source imaging network (baseline).

    Parameters
    ----------
    forward : str | ForwardModel | mne.Forward | None
        Forward model the training data are simulated with; the network only
        runs on its channel and source counts.
    hidden : int
        Width of the spatial and temporal modules.
    kernel_size : int
        Temporal convolution width (odd; any ``n_times`` works at predict).
    max_epochs, steps_per_epoch, batch_size : int
        Training budget: ``max_epochs * steps_per_epoch`` Adam steps.
    learning_rate : float
        Adam learning rate, cosine-annealed to zero.
    simulator_params : dict | None
        Keyword arguments of :class:`Simulator` for ``fit_simulated``.
    dtype : {"float32", "float64"}
        Precision of the network (float32 by default, as DeepSIF).
    device : str
        Torch device for training and inference: ``"cpu"`` (default),
        ``"cuda"`` or ``"cuda:N"`` when torch sees a GPU.
    random_state : int | None
        Seed of the weight initialisation and the simulated batches.
    verbose : bool
        Progress bars.

    Attributes
    ----------
    network_ : SpatioTemporalNet
    history_ : list of dict
        Mean training loss per epoch (``phase="joint"``, ``epoch``, ``steps``,
        ``loss``), from the trainer of the unfolded networks.
    train_seconds_ : float

    Examples
    --------
    A tiny network and budget (a real baseline trains for thousands of steps):

    >>> import unfolded_sbl as us
    >>> fwd = us.load_forward()
    >>> net = us.EndToEndRegressor(fwd, hidden=8, max_epochs=1, steps_per_epoch=2,
    ...                            batch_size=4, random_state=0).fit_simulated()
    >>> data = us.simulate(fwd, 2, random_state=0)
    >>> net.predict(data.sensors).shape
    (2, 1284, 100)
    """

    def __init__(self, forward=None, hidden=256, kernel_size=5, max_epochs=10,
                 steps_per_epoch=50, batch_size=32, learning_rate=1e-3,
                 simulator_params=None, dtype="float32", device="cpu", random_state=None,
                 verbose=False):
        self.forward = forward
        self.hidden = hidden
        self.kernel_size = kernel_size
        self.max_epochs = max_epochs
        self.steps_per_epoch = steps_per_epoch
        self.batch_size = batch_size
        self.learning_rate = learning_rate
        self.simulator_params = simulator_params
        self.dtype = dtype
        self.device = device
        self.random_state = random_state
        self.verbose = verbose

    def _build(self):
        check_positive_int(self.hidden, "hidden")
        check_positive_int(self.kernel_size, "kernel_size")
        if self.kernel_size % 2 == 0:
            raise ValueError(f"kernel_size must be odd, got {self.kernel_size}")
        check_positive_int(self.max_epochs, "max_epochs", minimum=0)
        check_positive_int(self.steps_per_epoch, "steps_per_epoch")
        check_positive_int(self.batch_size, "batch_size")
        if not self.learning_rate > 0:
            raise ValueError(f"learning_rate must be positive, got {self.learning_rate!r}")
        if self.dtype not in _DTYPES:
            raise ValueError(f"dtype must be one of {list(_DTYPES)}, got {self.dtype!r}")
        self.device_ = check_device(self.device)
        self._fit_forward(None)
        self.torch_dtype_ = _DTYPES[self.dtype]
        torch.manual_seed(0 if self.random_state is None else int(self.random_state))
        self.network_ = SpatioTemporalNet(self.n_features_in_, self.n_sources_, self.hidden,
                                          self.kernel_size).to(self.torch_dtype_).to(
                                              self.device_)
        self.history_ = []
        return self

    def _train(self, draw_batch):
        # the unfolded networks' trainer: its joint phase is plain Adam with a cosine
        # schedule; no progressive phase, no deep supervision (one "layer"), and no
        # row-space compression (the temporal convolution sees every time sample)
        settings = TrainSettings(max_epochs=self.max_epochs, steps_per_epoch=self.steps_per_epoch,
                                 progressive_steps=0, batch_size=self.batch_size,
                                 learning_rate=self.learning_rate, deep_supervision=0.0,
                                 loss="relative", compress=False, verbose=self.verbose)
        trainer = Trainer(_OneLayer(self.network_), None, draw_batch, None, settings,
                          random_state=self.random_state)
        self.history_ = trainer.run()
        self.train_seconds_ = trainer.state["seconds"]
        self.network_.eval()
        return self

    def fit(self, X, y):
        """Train on sensor data ``X`` (n, N, T) and true sources ``y`` (n, M, T)."""
        self._build()
        Y, target, _ = self._normalise(X, check_finite_array(y, "y", ndim=3))
        if target.shape[0] != Y.shape[0] or target.shape[1] != self.n_sources_ or (
                target.shape[2] != Y.shape[2]):
            raise ValueError(f"y must have shape ({Y.shape[0]}, {self.n_sources_}, "
                             f"{Y.shape[2]}), got {tuple(target.shape)}")

        def draw_batch(batch_size, rng):
            idx = rng.choice(len(Y), size=min(batch_size, len(Y)), replace=False)
            return Y[idx], target[idx], None

        return self._train(draw_batch)

    def fit_simulated(self, **simulator_params):
        """Train on fresh simulated batches of the forward model."""
        self._build()
        params = {**(self.simulator_params or {}), **simulator_params}
        simulator = Simulator(self.forward_, random_state=self.random_state,
                              device=self.device_, **params)

        def draw_batch(batch_size, rng):
            data = simulator.draw(batch_size)
            return tuple(self._normalise(data.sensors, data.sources))

        return self._train(draw_batch)

    def predict(self, X):
        """Sources, shape (n_samples, n_sources, n_times)."""
        if not hasattr(self, "network_"):
            from sklearn.exceptions import NotFittedError

            raise NotFittedError("call fit or fit_simulated first")
        Y, _, safe, nonzero = self._network_inputs(X, None, learn_noise=True)
        with torch.no_grad():
            sources = self.network_(self._tensor(Y)).double().cpu().numpy()
        source_scale = safe / self.lead_field_scale_ * nonzero
        return self._squeeze(sources * source_scale[:, None, None], X)
