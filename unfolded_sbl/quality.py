"""Data-quality checks on a recording before it is solved.

Each check returns findings that name the channels and say what to do; the
caller (:func:`unfolded_sbl.mne_io.apply`) logs them and, with
``drop_bad="auto"``, drops the channels that would distort the solution.

The channel rules are robust statistics of the analysis window, relative to
the median channel: a channel with SD below 1e-3 of the median is *flat*, one
with SD above ``HIGH_SD`` x the median is *noisy*, and one whose mean is more
than ``DC_OFFSET`` x the median channel SD away from the median channel mean
carries a *DC offset* (harmless after baseline correction, dominant without).
MNE's ``find_bad_channels_lof`` is not used: on clean evoked responses it
flags the channels that carry the response itself, so dropping its picks would
remove the signal.
"""

from __future__ import annotations

import numpy as np

#: SD ratio to the median channel below which a channel is flat.
FLAT_SD = 1e-3
#: SD ratio to the median channel above which a channel is noisy.
HIGH_SD = 8.0
#: |channel mean - median mean| above this many median channel SDs: a DC offset.
DC_OFFSET = 10.0
#: Windows shorter than this many samples are outside the learned models'
#: training data (``unfolded_sbl.network.TRAINED_N_TIMES``).
MIN_SAMPLES = 10
#: Signal level (dB, :func:`signal_level_db`) below which an estimate is *empty*: its
#: sources put less than 1e-4 of the data's power on the sensors (a field 1 % of the
#: data's amplitude), so no source rises above the noise model.  Relative to the data,
#: so the same for volts and for unit-scale data.
EMPTY_LEVEL_DB = -40.0
#: Median channel SD (V) above which the data look like microvolts stored as
#: volts (EEG is about 1e-6..1e-4 V), and below which like volts scaled twice.
UNIT_RANGE = (1e-8, 1e-2)


def _channel_stats(data):
    """Per-channel mean and SD over samples (and epochs), data (n, N, T)."""
    flat = np.moveaxis(data, 1, 0).reshape(data.shape[1], -1)
    return flat.mean(1), flat.std(1)


def check_channels(data, ch_names):
    """Flat, noisy and offset channels of ``data`` (n_epochs, n_channels, n_times).

    Returns
    -------
    findings : list of dict
        ``channel``, ``problem`` ("flat", "noisy" or "dc_offset"), ``ratio``
        (to the median channel) and ``message``.
    """
    mean, sd = _channel_stats(np.asarray(data, dtype=float))
    typical_sd = np.median(sd)
    if not typical_sd > 0:
        return []
    centred = np.abs(mean - np.median(mean)) / typical_sd
    findings = []
    for i, name in enumerate(ch_names):
        ratio = sd[i] / typical_sd
        if ratio < FLAT_SD:
            findings.append({"channel": name, "problem": "flat", "ratio": float(ratio),
                             "message": f"{name} is flat (SD {ratio:.1e} x the median "
                                        "channel): mark it bad"})
        elif ratio > HIGH_SD:
            findings.append({"channel": name, "problem": "noisy", "ratio": float(ratio),
                             "message": f"{name} has {ratio:.0f}x the median channel SD "
                                        "(a loose or noisy electrode?): mark it bad or "
                                        "check it"})
        elif centred[i] > DC_OFFSET:
            findings.append({"channel": name, "problem": "dc_offset",
                             "ratio": float(centred[i]),
                             "message": f"{name} carries a DC offset of "
                                        f"{1e6 * (mean[i] - np.median(mean)):+.0f} uV "
                                        f"({centred[i]:.0f}x the median channel SD): "
                                        "baseline correction removes it; without one it "
                                        "dominates the map"})
    return findings


def check_window(n_times):
    """A warning (str) for windows shorter than :data:`MIN_SAMPLES`, else None."""
    if n_times < MIN_SAMPLES:
        return (f"the window has {n_times} sample(s): the learned models were trained on "
                f"{MIN_SAMPLES} or more and fall back towards the classical solver; widen "
                "tmin/tmax for a stable map")
    return None


def check_units(data):
    """A warning (str) when the data's scale does not look like volts, else None."""
    sd = np.median(_channel_stats(np.asarray(data, dtype=float))[1])
    lo, hi = UNIT_RANGE
    if sd > hi:
        return (f"the median channel SD is {sd:.3g}: these look like microvolts stored as "
                "volts (MNE expects volts; EEG is about 1e-6..1e-4 V). Scale the data by "
                "1e-6 (the source amplitudes come out 1e6 too large otherwise)")
    if 0 < sd < lo:
        return (f"the median channel SD is {sd:.3g} V, below any EEG: were volts scaled "
                "twice (e.g. by 1e-6)? The source amplitudes scale with it")
    return None


def signal_level_db(source_var, lead_field, data_power):
    """Power an estimate's sources put on the sensors, relative to the data's, in dB.

    ``sum_m g_m ||l_m||^2 / N`` (the signal part of the model's data covariance,
    per channel) over ``data_power`` (the mean square of the referenced data).
    Sparse Bayesian learning prunes every source when the noise model explains
    the data; the level then falls far below :data:`EMPTY_LEVEL_DB`.

    Parameters
    ----------
    source_var : ndarray, shape (n_samples, n_sources)
        Source variances in the units of the sources squared.
    lead_field : ndarray, shape (n_channels, n_sources)
        The lead field the data are referenced with, in data units per source unit.
    data_power : ndarray, shape (n_samples,)
        Mean square of the data (units of the data squared).

    Returns
    -------
    level_db : ndarray, shape (n_samples,)
        -inf for a sample without sources; NaN for all-zero data.
    """
    gain = (np.asarray(lead_field, dtype=float) ** 2).sum(axis=0)  # (M,)
    signal = np.asarray(source_var, dtype=float) @ gain / np.shape(lead_field)[0]
    power = np.asarray(data_power, dtype=float)
    with np.errstate(divide="ignore", invalid="ignore"):
        return 10 * np.log10(np.where(power > 0, signal / power, np.nan))
