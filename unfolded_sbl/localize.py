"""The main job: read an EEG recording, localise it, write a map and a peak report.

Reading and epoching are MNE's; :func:`unfolded_sbl.mne_io.apply` does the
source imaging.  Coordinates and regions come from the fsaverage template:
template sources are fsaverage5 vertices, whose white-surface coordinates are
fsaverage's MRI (surface RAS) space, close to MNI305 ("MNI-like").  There is no
atlas offline, so the region is an approximate lobe from those coordinates.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from .viz import display_units

logger = logging.getLogger("unfolded_sbl")

#: channel-name prefixes that are EOG even when a file stores them as EEG
EOG_PREFIXES = ("eog", "heog", "veog")


def _mark_eog(inst):
    """Type channels named EOG*/HEOG*/VEOG* as EOG (EEGLAB files store them as EEG)."""
    mapping = {ch: "eog" for ch in inst.ch_names if ch.lower().startswith(EOG_PREFIXES)}
    if mapping:
        inst.set_channel_types(mapping, verbose=False)
    return inst


def read_recording(path, montage=None, event=None, condition=0, tmin=-0.2, tmax=0.5,
                   l_freq=None, h_freq=None, average=True, picks="eeg"):
    """Read any EEG file MNE reads as an ``mne.Evoked`` (or ``mne.Epochs``).

    Parameters
    ----------
    path : str | Path | mne.io.BaseRaw
        Evoked (``*ave.fif``), epochs (``*epo.fif``, epoched EEGLAB ``.set``) or
        raw data (``.fif``, ``.set``, BrainVision ``.vhdr``, ``.edf``/``.bdf``,
        anything ``mne.io.read_raw`` reads), or raw data already read (e.g. by
        ``mne_bids.read_raw_bids``, whose annotations come from ``events.tsv``).
    montage : str | None
        Name of an MNE standard montage to set (for files without positions,
        e.g. EDF); channel names must match it.
    event : str | None
        For raw data: annotation description to epoch on (e.g. ``"square"``);
        without it the continuous data come back as one Evoked (times from 0),
        to be cropped by :func:`~unfolded_sbl.apply`.
    condition : int | str
        Which evoked of an evoked file.
    tmin, tmax : float
        Epoch window (s) around ``event``.
    l_freq, h_freq : float | None
        Band-pass (Hz): applied to raw data before epoching, to evoked and
        epochs data as read.
    average : bool
        Average epochs into an Evoked (False: return the Epochs, single trials).
    picks : str | list of str
        Channel types kept from raw data and epochs (``"eeg"``, ``"meg"``,
        ``"meg,eeg"``, as :func:`~unfolded_sbl.apply`); evoked files keep theirs.
    """
    from .meg import parse_picks

    picks = list(parse_picks(picks))
    import mne

    if isinstance(path, mne.io.BaseRaw):
        return _from_raw(path.copy().load_data(), montage, event, tmin, tmax, l_freq, h_freq,
                         average, path.filenames[0] if path.filenames else "raw", picks)
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no such file: {path}")
    name = path.name.lower()
    filtered = False  # raw data are filtered before epoching
    if name.endswith(("ave.fif", "ave.fif.gz")):
        inst = mne.read_evokeds(path, condition=condition, verbose=False)
    elif name.endswith(("epo.fif", "epo.fif.gz")):
        inst = mne.read_epochs(path, verbose=False)
    elif name.endswith(".set") and _is_epoched_eeglab(path):
        inst = mne.read_epochs_eeglab(path, verbose=False)
    else:
        raw = mne.io.read_raw(path, preload=True, verbose=False)
        return _from_raw(raw, montage, event, tmin, tmax, l_freq, h_freq, average, path,
                         picks)
    _mark_eog(inst)
    if montage is not None:
        inst.set_montage(montage, match_case=False, on_missing="warn", verbose=False)
    if (l_freq is not None or h_freq is not None) and not filtered:
        inst.filter(l_freq, h_freq, picks=picks, verbose=False)
    if isinstance(inst, mne.BaseEpochs) and average:
        return inst.average(picks=picks)
    return inst


def _from_raw(raw, montage, event, tmin, tmax, l_freq, h_freq, average, path, picks=("eeg",)):
    """Raw data, filtered, as one Evoked segment or epoched (and averaged) on ``event``."""
    import mne

    _mark_eog(raw)
    if montage is not None:
        raw.set_montage(montage, match_case=False, on_missing="warn", verbose=False)
    if l_freq is not None or h_freq is not None:
        raw.filter(l_freq, h_freq, picks=list(picks), verbose=False)
    if event is None:  # the continuous data as one segment; apply() crops it
        data = raw.pick(list(picks))
        return mne.EvokedArray(data.get_data(), data.info, tmin=0.0, nave=1,
                               comment=Path(str(path)).stem, verbose=False)
    events, event_id = mne.events_from_annotations(raw, verbose=False)
    if event not in event_id:
        raise ValueError(f"event {event!r} is not in the recording; its annotations "
                         f"are {sorted(event_id)}")
    epochs = mne.Epochs(raw, events, {event: event_id[event]}, tmin=tmin, tmax=tmax,
                        baseline=(None, 0), preload=True, verbose=False)
    _mark_eog(epochs)
    return epochs.average(picks=list(picks)) if average else epochs


def _is_epoched_eeglab(path):
    from scipy.io import loadmat

    try:
        header = loadmat(path, variable_names=["EEG", "trials"], squeeze_me=True,
                         struct_as_record=False)
    except (NotImplementedError, ValueError):  # MATLAB v7.3 (HDF5) files
        return False
    eeg = header.get("EEG")
    trials = getattr(eeg, "trials", header.get("trials", 1))
    return int(np.atleast_1d(trials)[0]) > 1


# -- report ----------------------------------------------------------------------------
def mni_like_coordinates(forward):
    """fsaverage white-surface coordinates (mm) of the template's sources."""
    from .viz import HEMIS, _fsaverage5

    if forward.vertices is None or len(forward.vertices) != 2:
        raise ValueError("coordinates need a surface source space on fsaverage")
    mesh = _fsaverage5()[0]["white_matter"]
    return np.concatenate([np.asarray(mesh.parts[h].coordinates)[v]
                           for h, v in zip(HEMIS, forward.vertices)])


def approximate_lobe(xyz):
    """Approximate region of an MNI-like coordinate (mm), from simple boundaries.

    Without an atlas this is a guide, not a label: the boundaries (medial wall
    within |x| ~ 18 mm of the midline around the cingulate, central sulcus at
    y ~ -15 above z ~ 25, parieto-occipital at y ~ -70, temporal below z ~ 0
    lateral of |x| ~ 28) are those of the average brain.
    """
    x, y, z = xyz
    if y < -72 or (y < -60 and z < 15):
        return "occipital"
    if abs(x) < 18 and -45 < y < 35 and -5 < z < 45:
        return "cingulate (medial)"
    if z < 2 and abs(x) > 28 and y < 10:
        return "temporal"
    if y < -15 and z >= 15:
        return "parietal"
    if y < -15:
        return "temporal" if abs(x) > 28 else "occipito-temporal (medial)"
    if y < 5 and z > 35:
        return "central (pre/postcentral)"
    return "frontal"


def on_fsaverage_surface(forward):
    """The forward model's sources are fsaverage surface vertices (MNI-like
    coordinates, approximate lobes and the template maps apply)."""
    return (forward.subject == "fsaverage" and forward.vertices is not None
            and len(forward.vertices) == 2)


def _source_space_peaks(stc, forward, order, t_peak):
    """Peaks of a source space other than fsaverage's surface (a subject's own, a
    volume grid): positions in the source space's own frame, no lobe."""
    time_s = round(float(stc.times[t_peak]), 3)
    return [{"hemisphere": "left" if forward.positions[i, 0] < 0 else "right",
             "region": "n/a (not fsaverage)",
             **{f"{a}_mm": round(float(1e3 * v), 1) for a, v in zip("xyz",
                                                                    forward.positions[i])},
             "time_s": time_s, "amplitude": float(f"{stc.data[i, t_peak]:.4g}"),
             "source": int(i)} for i in order]


def peak_time_index(stc):
    """Index of the time of maximal source power (sum of squares over sources)."""
    return int(np.argmax((stc.data ** 2).sum(axis=0)))


def peak_report(stc, forward, n_peaks=5):
    """The strongest local maxima of a SourceEstimate's temporal peak.

    Returns
    -------
    peaks : list of dict
        ``hemisphere``, ``region`` (approximate lobe), ``x_mm``, ``y_mm``,
        ``z_mm`` (MNI-like, 0.1 mm), ``time_s`` (the map's peak time, the
        same for every peak and in the PNG title, 1 ms) and ``amplitude``
        (signed value then, in the estimate's units, 4 significant digits).
    """
    from .metrics import local_maxima

    data = np.abs(stc.data)
    t_peak = peak_time_index(stc)
    snapshot = data[:, t_peak]
    if not np.any(snapshot > 0):
        return []
    maxima = np.flatnonzero(local_maxima(snapshot[None], forward.adjacency)[0])
    order = maxima[np.argsort(snapshot[maxima])[::-1]][:n_peaks]
    if not on_fsaverage_surface(forward):
        return _source_space_peaks(stc, forward, order, t_peak)
    xyz = mni_like_coordinates(forward)
    n_left = len(forward.vertices[0])
    peaks = []
    time_s = round(float(stc.times[t_peak]), 3)
    for idx in order:
        peaks.append({"hemisphere": "left" if idx < n_left else "right",
                      "region": approximate_lobe(xyz[idx]),
                      "x_mm": round(float(xyz[idx, 0]), 1), "y_mm": round(float(xyz[idx, 1]), 1),
                      "z_mm": round(float(xyz[idx, 2]), 1), "time_s": time_s,
                      "amplitude": float(f"{stc.data[idx, t_peak]:.4g}"), "source": int(idx)})
    return peaks


def format_report(peaks, header="", units="A m"):
    """The peak table as text, amplitudes in :func:`display_units` of ``units``."""
    factor, label = display_units(units)
    lines = [header] if header else []
    lines.append(f"{'#':>2}  {'hemisphere':10s} {'region':26s} {'x':>6s} {'y':>6s} "
                 f"{'z':>6s} {'time (ms)':>9s} {'amplitude (' + label + ')':>16s}")
    for i, p in enumerate(peaks, 1):
        lines.append(f"{i:>2}  {p['hemisphere']:10s} {p['region']:26s} {p['x_mm']:6.0f} "
                     f"{p['y_mm']:6.0f} {p['z_mm']:6.0f} {1e3 * p['time_s']:9.0f} "
                     f"{factor * p['amplitude']:16.3g}")
    return "\n".join(lines)


def _csv_rows(peaks, units, solver):
    """Peak rows for the CSV: the amplitude in the report's unit, named in its header."""
    factor, label = display_units(units)
    column = "amplitude_nAm" if label == "nA m" else "amplitude_au"
    rows = []
    for peak in peaks:
        row = {k: v for k, v in peak.items() if k != "amplitude"}
        row[column] = float(f"{factor * peak['amplitude']:.4g}")
        rows.append({**row, "solver": solver})
    fields = ["hemisphere", "region", "x_mm", "y_mm", "z_mm", "time_s", column, "source",
              "solver"]
    return fields, rows


def write_outputs(stc, forward, prefix, formats=("stc", "png", "csv"), title="",
                  n_peaks=5, units="A m", report=None):
    """Write the estimate (``stc``), the map at the peak time with the peaks' time
    courses (``png``), the interactive viewer (``html``) and the peaks (``csv``);
    returns the peaks and the written paths.

    ``report`` (default: ``stc.solver_report`` where :func:`~unfolded_sbl.apply`
    set it) names the solver that answered in the title and the CSV.  An empty
    estimate (no source above the noise) has no peaks: the PNG and the HTML page
    say so instead of drawing a map, and the CSV has no rows.
    """
    import csv

    from .viz import empty_figure, html_viewer, plot_peak_map

    report = report if report is not None else getattr(stc, "solver_report", None)
    solver = report.solver if report is not None else ""
    empty = bool(report is not None and report.empty)
    title = f"{title} {solver},".strip() if solver else title
    prefix = Path(prefix)
    prefix.parent.mkdir(parents=True, exist_ok=True)
    peaks = [] if empty else peak_report(stc, forward, n_peaks)
    written = []
    if "stc" in formats:
        stc.save(str(prefix), overwrite=True, verbose=False)
        written += ([f"{prefix}-lh.stc", f"{prefix}-rh.stc"] if len(stc.vertices) == 2
                    else [f"{prefix}-vl.stc"])
    if not on_fsaverage_surface(forward) and {"png", "html"} & set(formats):
        logger.warning("the map (png, html) is drawn on fsaverage's surface; this source "
                       "space is another, so only the estimate and the peak table are written")
        formats = [f for f in formats if f not in ("png", "html")]
    if "png" in formats:
        if empty:
            empty_figure(report.describe_empty(), title=title.rstrip(","),
                         fname=f"{prefix}.png")
        else:
            plot_peak_map(stc, forward, peaks, title=title, units=units,
                          fname=f"{prefix}.png")
        written.append(f"{prefix}.png")
    if "html" in formats:
        written.append(html_viewer(stc, forward, peaks, f"{prefix}.html", title=title,
                                   units=units,
                                   message=report.describe_empty() if empty else None))
    if "csv" in formats:
        fields, rows = _csv_rows(peaks, units, solver)
        with open(f"{prefix}-peaks.csv", "w", newline="") as fid:
            writer = csv.DictWriter(fid, fieldnames=fields)
            writer.writeheader()
            writer.writerows(rows)
        written.append(f"{prefix}-peaks.csv")
    return peaks, written


def output_units(model):
    """Units of a model's source estimates, for labels."""
    if isinstance(model, str) and model.lower() == "sloreta":
        return "sLORETA (standardised, a.u.)"
    return "A m"
