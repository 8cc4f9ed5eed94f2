"""Simulator of EEG training data: focal cortical patches with band-limited activity.

Per sample (``METHOD.md``, paper appendix B):

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
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.sparse.csgraph import dijkstra
from scipy.signal import butter, sosfiltfilt

from ._validation import check_positive_int, check_range
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

    Attributes
    ----------
    sensors : ndarray, shape (n_samples, n_channels, n_times)
        EEG in volts.
    sources : ndarray, shape (n_samples, n_sources, n_times)
        Dipole moments in A m.
    noise_var : ndarray, shape (n_samples, n_channels)
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

    def save(self, fname):
        np.savez_compressed(fname, sensors=self.sensors.astype(np.float32),
                            sources=self.sources.astype(np.float32),
                            noise_var=self.noise_var, n_active=self.n_active)

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
    """

    def __init__(self, forward=None, n_patches=(5, 20), spread=(0.002, 0.004),
                 amplitude=(5e-9, 15e-9), snr_db=(5.0, 20.0), n_times=100, sfreq=100.0,
                 bands=tuple(BANDS), patch_distance="euclidean", log_uniform=False,
                 noise_color="white", noise_free_prob=0.0, bad_channel_prob=0.0,
                 head_models=None, nominal_prob=0.25, random_state=None):
        self.forward = as_forward(forward)
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

    def _project(self, sources):
        """Clean sensor signals, through the nominal or a perturbed head per sample."""
        lead_field = self.forward.lead_field
        if self.head_models is None:
            return np.einsum("cs,nst->nct", lead_field, sources, optimize=True)
        clean = np.empty((len(sources), lead_field.shape[0], sources.shape[2]))
        for i, x in enumerate(sources):
            nominal = self.rng.random() < self.nominal_prob
            gain = lead_field if nominal else self.head_models.draw_lead_field(self.rng)
            clean[i] = gain @ x
        return clean

    def _background(self, n_samples, n_times):
        """Unit-power sensor background of ``N_BACKGROUND`` random cortical sources."""
        fwd, rng = self.forward, self.rng
        out = np.empty((n_samples, fwd.n_channels, n_times))
        for i in range(n_samples):
            idx = rng.integers(fwd.n_sources, size=N_BACKGROUND)
            courses = self._time_courses(N_BACKGROUND, n_times)
            sources = np.zeros((1, fwd.n_sources, n_times))
            np.add.at(sources[0], idx, courses)
            signal = self._project(sources)[0]
            signal -= signal.mean(axis=0, keepdims=True)
            out[i] = signal / np.sqrt(np.mean(signal ** 2))
        return out

    def _noise(self, clean):
        """Sensor noise (white, or background plus white) and its per-channel variance."""
        rng = self.rng
        n_samples, n_channels, n_times = clean.shape
        power = np.mean(clean ** 2, axis=(1, 2))
        snr = 10 ** (rng.uniform(*self.snr_db, size=(n_samples, n_channels)) / 10)
        noise_var = power[:, None] / snr
        noise = rng.standard_normal(clean.shape) * np.sqrt(noise_var)[:, :, None]
        coloured = np.zeros(n_samples, bool)
        if self.noise_color == "coloured":
            coloured[:] = True
        elif self.noise_color == "mixed":
            coloured = rng.random(n_samples) < 0.5
        if coloured.any():
            # a fraction of the noise power comes from the background instead
            share = rng.uniform(0.3, 0.9, size=coloured.sum())
            background = self._background(int(coloured.sum()), n_times)
            total = noise_var[coloured].mean(axis=1)
            noise[coloured] = (noise[coloured] * np.sqrt(1 - share)[:, None, None]
                               + background * np.sqrt(share * total)[:, None, None])
            noise_var[coloured] = np.mean(noise[coloured] ** 2, axis=2)
        if not self.noise_free_prob:  # no draw: default streams stay as they were
            return noise, noise_var
        silent = rng.random(n_samples) < self.noise_free_prob
        noise[silent] = 0.0
        # known-noise models need positive variances: a floor far below the signal
        noise_var[silent] = power[silent, None] * 1e-10
        return noise, noise_var

    def _bad_channels(self, sensors, noise_var):
        rng = self.rng
        rms = np.sqrt(np.mean(sensors ** 2, axis=(1, 2)))
        for i in np.flatnonzero(rng.random(len(sensors)) < self.bad_channel_prob):
            channels = rng.choice(sensors.shape[1], size=rng.integers(1, 4), replace=False)
            for ch in channels:
                if rng.random() < 0.5:
                    sensors[i, ch] = 0.0  # flat
                else:
                    std = rms[i] * 10 ** rng.uniform(1, 2)
                    sensors[i, ch] += rng.standard_normal(sensors.shape[2]) * std
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
        sources = np.empty((n_samples, fwd.n_sources, n_times))
        bounds = np.concatenate([[0], np.cumsum(n_active)])
        for i in range(n_samples):
            patch = slice(bounds[i], bounds[i + 1])
            sources[i] = kernels[patch].T @ courses[patch]
        clean = self._project(sources)
        noise, noise_var = self._noise(clean)
        sensors = clean + noise
        if self.bad_channel_prob:
            self._bad_channels(sensors, noise_var)
        return SimulatedData(sensors, sources, noise_var, n_active)

    def batches(self, batch_size, n_batches=None):
        """Yield :class:`SimulatedData` batches forever (or ``n_batches`` times)."""
        batch_size = check_positive_int(batch_size, "batch_size")
        count = 0
        while n_batches is None or count < n_batches:
            yield self.draw(batch_size)
            count += 1


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
