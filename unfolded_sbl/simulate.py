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
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.signal import butter, sosfiltfilt

from ._validation import check_positive_int, check_range
from .forward import as_forward

BANDS = {"delta": (0.5, 4.0), "theta": (4.0, 8.0), "alpha": (8.0, 13.0),
         "mu": (8.0, 12.0), "beta": (12.0, 30.0)}
PATCH_CUTOFF = 0.05


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
    n_times : int
        Time samples per sample (default 100).
    sfreq : float
        Sampling frequency in Hz (default 100).
    bands : sequence of str
        Frequency bands to draw from (keys of ``BANDS``).
    random_state : int | numpy.random.Generator | None
        Seed of the stream.
    """

    def __init__(self, forward=None, n_patches=(5, 20), spread=(0.002, 0.004),
                 amplitude=(5e-9, 15e-9), snr_db=(5.0, 20.0), n_times=100, sfreq=100.0,
                 bands=tuple(BANDS), random_state=None):
        self.forward = as_forward(forward)
        lo, hi = check_range(n_patches, "n_patches", low=1, high=self.forward.n_sources)
        if lo != int(lo) or hi != int(hi):
            raise ValueError(f"n_patches must be integers, got {n_patches!r}")
        self.n_patches = (int(lo), int(hi))
        self.spread = check_range(spread, "spread", positive=True)
        self.amplitude = check_range(amplitude, "amplitude", positive=True)
        self.snr_db = check_range(snr_db, "snr_db", low=-np.inf)
        self.n_times = check_positive_int(n_times, "n_times")
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

    def _time_courses(self, n):
        """(n, n_times) band-limited courses with unit RMS."""
        rng = self.rng
        pad = int(2 * self.sfreq)  # filter transients fall into the discarded padding
        white = rng.standard_normal((n, self.n_times + 2 * pad))
        band_idx = rng.integers(len(self.bands), size=n)
        courses = np.empty((n, self.n_times))
        for i, band in enumerate(self.bands):
            sel = band_idx == i
            if sel.any():
                courses[sel] = sosfiltfilt(self._sos[band], white[sel], axis=-1)[:, pad:-pad]
        courses /= np.sqrt(np.mean(courses ** 2, axis=1, keepdims=True))
        return courses

    def draw(self, n_samples):
        """Simulate ``n_samples`` samples; returns :class:`SimulatedData`."""
        n_samples = check_positive_int(n_samples, "n_samples")
        rng, fwd = self.rng, self.forward
        n_active = rng.integers(self.n_patches[0], self.n_patches[1] + 1, size=n_samples)
        n_total = int(n_active.sum())
        centres = rng.integers(fwd.n_sources, size=n_total)
        spread = rng.uniform(*self.spread, size=n_total)
        amplitude = rng.uniform(*self.amplitude, size=n_total)
        pos = fwd.positions
        sq_norm = (pos ** 2).sum(1)
        sq_dist = np.maximum(sq_norm[centres][:, None] + sq_norm[None]
                             - 2 * pos[centres] @ pos.T, 0.0)
        kernels = np.exp(-sq_dist / (2 * spread[:, None] ** 2))
        kernels[kernels < PATCH_CUTOFF] = 0.0
        courses = self._time_courses(n_total) * amplitude[:, None]
        sources = np.empty((n_samples, fwd.n_sources, self.n_times))
        bounds = np.concatenate([[0], np.cumsum(n_active)])
        for i in range(n_samples):
            patch = slice(bounds[i], bounds[i + 1])
            sources[i] = kernels[patch].T @ courses[patch]
        clean = np.einsum("cs,nst->nct", fwd.lead_field, sources, optimize=True)
        power = np.mean(clean ** 2, axis=(1, 2))
        snr = 10 ** (rng.uniform(*self.snr_db, size=(n_samples, fwd.n_channels)) / 10)
        noise_var = power[:, None] / snr
        noise = rng.standard_normal(clean.shape) * np.sqrt(noise_var)[:, :, None]
        return SimulatedData(clean + noise, sources, noise_var, n_active)

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
