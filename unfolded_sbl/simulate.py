"""Simulator of EEG training data: focal cortical patches with band-limited activity.

Per sample (the preprint, appendix B):

* a number of active patches drawn uniformly from ``n_patches`` (default 5-20);
* each patch is a Gaussian kernel of the Euclidean distance to a random centre
  source, ``exp(-d^2 / (2 spread^2))``, truncated below ``PATCH_CUTOFF`` of its
  peak so that the true support is finite, with ``spread`` drawn from
  ``spread`` (metres, default 2-4 mm, calibrated so that classical CB lands
  near the paper's table 3 on the default template: with wider patches fixed
  normals that flip across sulci cancel and every solver fails);
* its time course is white noise band-passed (4th-order Butterworth, zero phase)
  into one of the delta, theta, alpha, mu or beta bands, scaled to an RMS
  amplitude drawn from ``amplitude`` (A m; default 5-15 nAm);
* sensor noise is Gaussian and heteroscedastic: sensor ``n`` gets variance
  ``P / 10**(snr_db[n] / 10)`` where ``P`` is the mean power of the clean
  (average-referenced) sensor signal and ``snr_db[n]`` is drawn uniformly from
  ``snr_db`` (default 5-20 dB).

Outputs are in physical units: sources in A m (nAm scale), sensors in volts
(microvolt scale).

Beyond these paper defaults the simulator covers the conditions recordings
carry (all off by default; :data:`ROBUST_SIMULATOR` switches them on for
training the shipped models):

* ``patch_distance="mesh"``: patches spread along the cortical mesh (shortest
  paths over the source-space adjacency, edges weighted by their length in
  metres), so a patch never jumps across a sulcus;
* ``log_uniform=True``: the number of patches, the spread and ``n_times`` are
  drawn log-uniformly (focal and extended, short and long samples alike);
* ``n_times=(lo, hi)``: a window length drawn per :meth:`Simulator.draw` call;
* ``noise_color="coloured"`` (or ``"mixed"``: half the samples): part of the
  noise (a fraction drawn in 30-90 %) is background activity of
  ``N_BACKGROUND`` weak random cortical sources with broadband time courses,
  the rest white sensor noise;
* ``noise_free_prob``: the probability that a sample has no noise at all;
* ``bad_channel_prob``: the probability that a sample has 1-3 bad channels,
  each flat (zero) or noisy (noise standard deviation 10-100x the signal RMS);
* ``head_models``: a :class:`~unfolded_sbl.head_models.HeadModelEnsemble`
  through which each sample is projected (a random member and orientation
  error, or the nominal lead field with probability ``nominal_prob``), while
  the true sources stay on the nominal source space.

Devices.  Every random number comes from the numpy generator (``random_state``),
and the band-pass filters and mesh distances run on the host; the large arrays
(sources, their projection, the noise and its mixing) are assembled in float64
torch on ``device``.  ``Simulator(..., device="cuda")`` thus builds training
batches on the GPU, and draws the same samples as on the CPU (to round-off) for
the same seed.  Without ``device`` the results come back as numpy arrays.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from scipy.signal import butter, sosfiltfilt
from scipy.sparse.csgraph import dijkstra

from ._validation import check_device, check_positive_int, check_range
from .forward import as_forward, mesh_graph

BANDS = {"delta": (0.5, 4.0), "theta": (4.0, 8.0), "alpha": (8.0, 13.0),
         "mu": (8.0, 12.0), "beta": (12.0, 30.0)}
PATCH_CUTOFF = 0.05
#: Number of random cortical sources making up coloured (background) noise.
N_BACKGROUND = 300
#: Simulator settings of the robust training distribution of the shipped models.
ROBUST_SIMULATOR = dict(n_patches=(1, 40), spread=(0.001, 0.015), snr_db=(-10.0, 40.0),
                        n_times=(10, 300), patch_distance="mesh", log_uniform=True,
                        noise_color="mixed", noise_free_prob=0.05, bad_channel_prob=0.1)


@dataclass
class SimulatedData:
    """A batch of simulated samples.

    ``sensors``, ``sources`` and ``noise_var`` are float64 numpy arrays, or torch
    tensors on the simulator's ``device`` when it was given one (:meth:`numpy`
    copies them to the host).

    Attributes
    ----------
    sensors : ndarray | Tensor, shape (n_samples, n_channels, n_times)
        EEG in volts.
    sources : ndarray | Tensor, shape (n_samples, n_sources, n_times)
        Dipole moments in A m.
    noise_var : ndarray | Tensor, shape (n_samples, n_channels)
        True per-sensor noise variances (V^2).
    n_active : ndarray, shape (n_samples,)
        Number of patches per sample.
    """

    sensors: np.ndarray
    sources: np.ndarray
    noise_var: np.ndarray
    n_active: np.ndarray

    def __len__(self):
        return len(self.sensors)

    def numpy(self):
        """The same batch with numpy arrays (copied from the device if needed)."""
        def host(value):
            return value.cpu().numpy() if torch.is_tensor(value) else value

        return SimulatedData(host(self.sensors), host(self.sources), host(self.noise_var),
                             self.n_active)

    def save(self, fname):
        data = self.numpy()
        np.savez_compressed(fname, sensors=data.sensors.astype(np.float32),
                            sources=data.sources.astype(np.float32),
                            noise_var=data.noise_var, n_active=data.n_active)

    @classmethod
    def load(cls, fname):
        try:
            with np.load(fname, allow_pickle=False) as data:
                return cls(**{k: data[k].astype(np.float64) if k != "n_active" else data[k]
                              for k in ("sensors", "sources", "noise_var", "n_active")})
        except (OSError, KeyError, ValueError, EOFError) as err:
            raise ValueError(f"cannot read simulated dataset {fname}: {err}") from err


class Simulator:
    """Draws simulated samples for a forward model; see the module docstring.

    Parameters
    ----------
    forward : str | ForwardModel | mne.Forward
        Forward model (default: the embedded template).
    n_patches : int | (int, int)
        Number (or inclusive range) of active patches per sample.
    spread : float | (float, float)
        Gaussian patch spread in metres.
    amplitude : float | (float, float)
        RMS dipole moment per patch in A m.
    snr_db : float | (float, float)
        Per-sensor SNR interval in dB.
    n_times : int | (int, int)
        Time samples per sample (default 100), or a range drawn per ``draw``.
    sfreq : float
        Sampling frequency in Hz (default 100).
    bands : sequence of str
        Frequency bands to draw from (keys of ``BANDS``).
    patch_distance : {"euclidean", "mesh"}
        Distance of the patch kernel: straight line (default, the paper's) or
        along the cortical mesh.
    log_uniform : bool
        Draw ``n_patches``, ``spread`` and ``n_times`` log-uniformly.
    noise_color : {"white", "coloured", "mixed"}
    noise_free_prob, bad_channel_prob : float
        Probabilities per sample of no noise and of 1-3 bad channels.
    head_models : HeadModelEnsemble | None
        Perturbed heads to project the sources through (same channels and
        sources as ``forward``).
    nominal_prob : float
        With ``head_models``, the probability of the nominal lead field.
    random_state : int | numpy.random.Generator | None
        Seed of the stream.
    device : str | None
        ``"cpu"``, ``"cuda"`` or ``"cuda:N"``: assemble the batches there and
        return torch tensors on it (see the module docstring); None (default):
        numpy arrays.
    """

    def __init__(self, forward=None, n_patches=(5, 20), spread=(0.002, 0.004),
                 amplitude=(5e-9, 15e-9), snr_db=(5.0, 20.0), n_times=100, sfreq=100.0,
                 bands=tuple(BANDS), patch_distance="euclidean", log_uniform=False,
                 noise_color="white", noise_free_prob=0.0, bad_channel_prob=0.0,
                 head_models=None, nominal_prob=0.25, random_state=None, device=None):
        self.forward = as_forward(forward)
        self.device = None if device is None else check_device(device)
        self._work = self.device or torch.device("cpu")
        self._lead_field = self._tensor(self.forward.lead_field)
        self._members = None  # the head-model ensemble on the device, when first drawn
        lo, hi = check_range(n_patches, "n_patches", low=1, high=self.forward.n_sources)
        if lo != int(lo) or hi != int(hi):
            raise ValueError(f"n_patches must be integers, got {n_patches!r}")
        self.n_patches = (int(lo), int(hi))
        self.spread = check_range(spread, "spread", positive=True)
        self.amplitude = check_range(amplitude, "amplitude", positive=True)
        self.snr_db = check_range(snr_db, "snr_db", low=-np.inf)
        if isinstance(n_times, (tuple, list)):
            lo, hi = check_range(n_times, "n_times", low=1)
            if lo != int(lo) or hi != int(hi):
                raise ValueError(f"n_times must be integers, got {n_times!r}")
            self.n_times = (int(lo), int(hi))
        else:
            self.n_times = check_positive_int(n_times, "n_times")
        if patch_distance not in ("euclidean", "mesh"):
            raise ValueError(f"patch_distance must be 'euclidean' or 'mesh', "
                             f"got {patch_distance!r}")
        if noise_color not in ("white", "coloured", "mixed"):
            raise ValueError(f"noise_color must be 'white', 'coloured' or 'mixed', "
                             f"got {noise_color!r}")
        self.patch_distance = patch_distance
        self.log_uniform = bool(log_uniform)
        self.noise_color = noise_color
        self.noise_free_prob = check_range(noise_free_prob, "noise_free_prob", high=1)[0]
        self.bad_channel_prob = check_range(bad_channel_prob, "bad_channel_prob", high=1)[0]
        self.nominal_prob = check_range(nominal_prob, "nominal_prob", high=1)[0]
        if head_models is not None and (head_models.n_channels, head_models.n_sources) != (
                self.forward.n_channels, self.forward.n_sources):
            raise ValueError(
                f"head_models has {head_models.n_channels} channels x "
                f"{head_models.n_sources} sources; the forward model has "
                f"{self.forward.n_channels} x {self.forward.n_sources}")
        self.head_models = head_models
        self._mesh = None
        if patch_distance == "mesh":
            self._mesh = mesh_graph(self.forward)
        self.sfreq = float(sfreq)
        unknown = set(bands) - set(BANDS)
        if unknown or not bands:
            raise ValueError(f"bands must be a non-empty subset of {list(BANDS)}, "
                             f"got {bands!r}")
        nyquist = self.sfreq / 2
        self.bands = [b for b in bands if BANDS[b][0] < nyquist]
        if not self.bands:
            raise ValueError(f"no band lies below the Nyquist frequency {nyquist} Hz")
        self._sos = {b: butter(4, [BANDS[b][0], min(BANDS[b][1], 0.95 * nyquist)],
                               btype="band", fs=self.sfreq, output="sos")
                     for b in self.bands}
        self.rng = np.random.default_rng(random_state)

    def _tensor(self, array):
        """float64 tensor on the working device (host draws travel once)."""
        return torch.as_tensor(np.asarray(array, dtype=np.float64), device=self._work)

    def _uniform(self, bounds, size, integer=False):
        lo, hi = bounds
        if self.log_uniform and lo > 0:
            values = np.exp(self.rng.uniform(np.log(lo), np.log(hi + integer), size=size))
            return np.minimum(np.floor(values), hi).astype(int) if integer else values
        if integer:
            return self.rng.integers(lo, hi + 1, size=size)
        return self.rng.uniform(lo, hi, size=size)

    def _time_courses(self, n, n_times):
        """(n, n_times) band-limited courses with unit RMS."""
        rng = self.rng
        pad = int(2 * self.sfreq)  # filter transients fall into the discarded padding
        white = rng.standard_normal((n, n_times + 2 * pad))
        band_idx = rng.integers(len(self.bands), size=n)
        courses = np.empty((n, n_times))
        for i, band in enumerate(self.bands):
            sel = band_idx == i
            if sel.any():
                courses[sel] = sosfiltfilt(self._sos[band], white[sel], axis=-1)[:, pad:-pad]
        courses /= np.sqrt(np.mean(courses ** 2, axis=1, keepdims=True))
        return courses

    def _patch_kernels(self, centres, spread):
        """(n_patches, n_sources) Gaussian kernels, truncated at ``PATCH_CUTOFF``."""
        pos = self.forward.positions
        if self._mesh is None:
            sq_norm = (pos ** 2).sum(1)
            sq_dist = np.maximum(sq_norm[centres][:, None] + sq_norm[None]
                                 - 2 * pos[centres] @ pos.T, 0.0)
        else:
            reach = spread.max() * np.sqrt(2 * np.log(1 / PATCH_CUTOFF))
            sq_dist = dijkstra(self._mesh, directed=False, indices=centres, limit=reach) ** 2
        kernels = np.exp(-sq_dist / (2 * spread[:, None] ** 2))
        kernels[kernels < PATCH_CUTOFF] = 0.0
        return kernels

    def _assemble(self, kernels, courses, n_active):
        """Sources (B, M, T): the sum over each sample's patches of kernel x course.

        On the CPU with numpy, which is faster there than torch for these small
        products; on a GPU one batched product, each sample's patches zero-padded
        to the largest count.
        """
        if self._work.type != "cpu":
            return self._tensor(padded_patches(kernels, n_active)).transpose(1, 2) @ (
                self._tensor(padded_patches(courses, n_active)))
        sources = np.empty((len(n_active), kernels.shape[1], courses.shape[1]))
        bounds = np.concatenate([[0], np.cumsum(n_active)])
        for i in range(len(n_active)):
            patch = slice(bounds[i], bounds[i + 1])
            sources[i] = kernels[patch].T @ courses[patch]
        return torch.from_numpy(sources)

    def _project(self, sources):
        """Clean sensor signals (B, N, T), through the nominal or a perturbed head per
        sample."""
        if self.head_models is None:
            if self._work.type == "cpu":  # numpy on the CPU, see _assemble
                return torch.from_numpy(np.einsum("cs,nst->nct", self.forward.lead_field,
                                                  sources.numpy(), optimize=True))
            return self._lead_field @ sources
        clean = sources.new_empty((len(sources), self._lead_field.shape[0], sources.shape[2]))
        for i, x in enumerate(sources):
            clean[i] = self._gain() @ x
        return clean

    def _gain(self):
        """One sample's lead field (N, M) on the device: the nominal one, or with
        ``head_models`` a random member with probability ``1 - nominal_prob``."""
        if self.head_models is None or self.rng.random() < self.nominal_prob:
            return self._lead_field
        return self._member_gain()

    def _member_gain(self):
        """A random head-model member's lead field, as ``HeadModelEnsemble.draw_lead_field``
        draws it, combined on the device (the ensemble travels there once)."""
        if self._members is None:
            self._members = torch.as_tensor(self.head_models.lead_fields, device=self._work)
        index, weights = self.head_models.draw_member(self.rng)
        return torch.einsum("nmk,mk->nm", self._members[index].double(),
                            self._tensor(weights))

    def _background(self, n_samples, n_times):
        """Unit-power sensor background of ``N_BACKGROUND`` random cortical sources."""
        fwd, rng = self.forward, self.rng
        out = self._lead_field.new_empty((n_samples, fwd.n_channels, n_times))
        for i in range(n_samples):
            idx = rng.integers(fwd.n_sources, size=N_BACKGROUND)
            courses = self._tensor(self._time_courses(N_BACKGROUND, n_times))
            # only the drawn sources' columns (a source drawn twice counts twice)
            signal = self._gain()[:, torch.as_tensor(idx, device=self._work)] @ courses
            signal = signal - signal.mean(dim=0, keepdim=True)
            out[i] = signal / signal.pow(2).mean().sqrt()
        return out

    def _noise(self, clean):
        """Sensor noise (white, or background plus white) and its per-channel variance."""
        rng = self.rng
        n_samples, n_channels, n_times = clean.shape
        power = clean.pow(2).mean(dim=(1, 2))
        snr = 10 ** (rng.uniform(*self.snr_db, size=(n_samples, n_channels)) / 10)
        noise_var = power[:, None] / self._tensor(snr)
        noise = self._tensor(rng.standard_normal(clean.shape)) * noise_var.sqrt()[:, :, None]
        coloured = np.zeros(n_samples, bool)
        if self.noise_color == "coloured":
            coloured[:] = True
        elif self.noise_color == "mixed":
            coloured = rng.random(n_samples) < 0.5
        if coloured.any():
            # a fraction of the noise power comes from the background instead
            share = self._tensor(rng.uniform(0.3, 0.9, size=coloured.sum()))
            background = self._background(int(coloured.sum()), n_times)
            mask = torch.as_tensor(coloured, device=self._work)
            total = noise_var[mask].mean(dim=1)
            noise[mask] = (noise[mask] * (1 - share).sqrt()[:, None, None]
                           + background * (share * total).sqrt()[:, None, None])
            noise_var[mask] = noise[mask].pow(2).mean(dim=2)
        if not self.noise_free_prob:  # no draw: default streams stay as they were
            return noise, noise_var
        silent = torch.as_tensor(rng.random(n_samples) < self.noise_free_prob,
                                 device=self._work)
        noise[silent] = 0.0
        # known-noise models need positive variances: a floor far below the signal
        noise_var[silent] = power[silent, None] * 1e-10
        return noise, noise_var

    def _bad_channels(self, sensors, noise_var):
        rng = self.rng
        rms = sensors.pow(2).mean(dim=(1, 2)).sqrt().cpu().numpy()  # (B,): the draws' scale
        for i in np.flatnonzero(rng.random(len(sensors)) < self.bad_channel_prob):
            channels = rng.choice(sensors.shape[1], size=rng.integers(1, 4), replace=False)
            for ch in channels:
                if rng.random() < 0.5:
                    sensors[i, ch] = 0.0  # flat
                else:
                    std = rms[i] * 10 ** rng.uniform(1, 2)
                    sensors[i, ch] += self._tensor(rng.standard_normal(sensors.shape[2]) * std)
                    noise_var[i, ch] += std ** 2

    def draw(self, n_samples):
        """Simulate ``n_samples`` samples; returns :class:`SimulatedData`."""
        n_samples = check_positive_int(n_samples, "n_samples")
        rng, fwd = self.rng, self.forward
        n_times = self.n_times
        if isinstance(n_times, tuple):
            n_times = int(self._uniform(n_times, None, integer=True))
        n_active = self._uniform(self.n_patches, n_samples, integer=True)
        n_total = int(n_active.sum())
        centres = rng.integers(fwd.n_sources, size=n_total)
        spread = self._uniform(self.spread, n_total)
        amplitude = rng.uniform(*self.amplitude, size=n_total)
        kernels = self._patch_kernels(centres, spread)
        courses = self._time_courses(n_total, n_times) * amplitude[:, None]
        sources = self._assemble(kernels, courses, n_active)
        clean = self._project(sources)
        noise, noise_var = self._noise(clean)
        sensors = clean + noise
        if self.bad_channel_prob:
            self._bad_channels(sensors, noise_var)
        data = SimulatedData(sensors, sources, noise_var, n_active)
        return data if self.device is not None else data.numpy()

    def batches(self, batch_size, n_batches=None):
        """Yield :class:`SimulatedData` batches forever (or ``n_batches`` times)."""
        batch_size = check_positive_int(batch_size, "batch_size")
        count = 0
        while n_batches is None or count < n_batches:
            yield self.draw(batch_size)
            count += 1


def padded_patches(values, n_active):
    """(n_samples, max(n_active), ...) array of per-patch ``values`` (sum(n_active), ...),
    each sample's patches first and zeros after them."""
    owner = np.repeat(np.arange(len(n_active)), n_active)
    slot = np.arange(len(owner)) - np.concatenate([[0], np.cumsum(n_active)[:-1]])[owner]
    padded = np.zeros((len(n_active), int(np.max(n_active))) + values.shape[1:])
    padded[owner, slot] = values
    return padded


def simulate(forward=None, n_samples=1, random_state=None, **kwargs):
    """Simulate EEG samples; see :class:`Simulator` for the keyword arguments.

    Returns
    -------
    data : SimulatedData
        ``.sensors`` (n_samples, n_channels, n_times) in volts, ``.sources``
        (n_samples, n_sources, n_times) in A m and ``.noise_var``
        (n_samples, n_channels).
    """
    return Simulator(forward, random_state=random_state, **kwargs).draw(n_samples)


def simulate_to_file(fname, forward=None, n_samples=1000, random_state=None,
                     batch_size=256, **kwargs):
    """Simulate ``n_samples`` in batches and write them to a compressed ``.npz``."""
    sim = Simulator(forward, random_state=random_state, **kwargs)
    parts = [sim.draw(min(batch_size, n_samples - start))
             for start in range(0, n_samples, batch_size)]
    data = SimulatedData(*(np.concatenate([getattr(p, f) for p in parts])
                           for f in ("sensors", "sources", "noise_var", "n_active")))
    data.save(fname)
    return data
