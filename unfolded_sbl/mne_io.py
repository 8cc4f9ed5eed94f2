"""MNE integration: source imaging of ``mne.Evoked`` / ``mne.Epochs`` recordings.

``apply`` matches the recording's EEG channels to a forward model by name
(case-insensitive), takes the matching rows of the lead field (re-referenced
to the average of those channels, as the data are), runs a solver and returns
``mne.SourceEstimate`` objects on fsaverage.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from .forward import loose_model
from .quality import EMPTY_LEVEL_DB
from .resolve import TEMPLATE_SEARCH, resolve_forward  # noqa: F401

logger = logging.getLogger("unfolded_sbl")


def _channel_data(inst, picks):
    """Data of the channels ``picks`` (names or indices) as (n_epochs, n_channels,
    n_times); an Evoked is one epoch."""
    picks = [inst.ch_names.index(p) if isinstance(p, str) else p for p in picks]
    data = inst.get_data(picks=picks)
    return data[None] if data.ndim == 2 else data


#: Channel types of other recording modalities: not used, said at WARNING.
OTHER_DATA_TYPES = ("mag", "grad", "seeg", "ecog", "dbs", "hbo", "hbr", "fnirs_cw_amplitude",
                    "fnirs_fd_ac_amplitude", "fnirs_fd_phase", "fnirs_od", "csd")


def _unused_channels(inst):
    """Channels that are not EEG, grouped by type: {type: [names]}."""
    groups = {}
    for name, kind in zip(inst.ch_names, inst.get_channel_types()):
        if kind != "eeg":
            groups.setdefault(kind, []).append(name)
    return groups


#: How channel types are named in messages.
_TYPE_NAMES = {"mag": "MEG magnetometers", "grad": "MEG gradiometers"}


def _describe(groups):
    return "; ".join(f"{len(names)} {_TYPE_NAMES.get(kind, kind.upper())} "
                     f"({', '.join(names[:4])}{', ...' if len(names) > 4 else ''})"
                     for kind, names in groups.items())


def _report_unused(inst):
    """Say once which channels are not used and why: other data channels (MEG, sEEG,
    ...) at WARNING, auxiliary ones (EOG, ECG, stimulus, misc) at INFO."""
    groups = _unused_channels(inst)
    data = {k: v for k, v in groups.items() if k in OTHER_DATA_TYPES}
    aux = {k: v for k, v in groups.items() if k not in OTHER_DATA_TYPES}
    if data:
        logger.warning("not used: %s. The estimate comes from the EEG channels alone "
                       "(picks='meg,eeg' with a noise_cov localises them together)",
                       _describe(data))
    if aux:
        logger.info("not used (not EEG): %s", _describe(aux))
    return groups


def _eeg_channels(inst):
    """Names of good EEG channels with signal (flat channels are dropped)."""
    import mne

    groups = _report_unused(inst)
    picks = mne.pick_types(inst.info, eeg=True, exclude="bads")
    if len(picks) == 0:
        meg = sum(len(groups.get(kind, [])) for kind in ("mag", "grad"))
        if meg:
            raise ValueError(
                f"the recording has {meg} MEG channels and no good EEG channels: localise "
                "them with picks='meg' and a noise_cov (and forward= your mne.Forward, "
                "else one is built on fsaverage for the recording's sensors)")
        raise ValueError("the recording has no good EEG channels"
                         + (f" (its channels: {_describe(groups)})" if groups else ""))
    bads = [c for c in inst.info["bads"] if c in inst.ch_names
            and inst.get_channel_types(picks=[c])[0] == "eeg"]
    if bads:
        logger.info("not used (marked bad): %s", ", ".join(bads))
    data = _channel_data(inst, picks)
    flat = np.std(np.moveaxis(data, 1, 0).reshape(len(picks), -1), axis=1) == 0
    if flat.any():
        logger.warning("dropping flat channels: %s", [inst.ch_names[p] for p in picks[flat]])
    return [inst.ch_names[p] for p in picks[~flat]]


def forward_for_channels(ch_names, forward=None, positions=None, log=print):
    """A forward model with exactly ``ch_names``: :func:`unfolded_sbl.resolve.resolve_forward`."""
    return resolve_forward(forward, ch_names=ch_names, positions=positions, log=log)


def _montage_positions(inst, ch_names):
    """Head-frame positions of ``ch_names`` from the montage of ``inst`` (a recording or
    an ``mne_lsl`` stream: anything with ``get_montage``), where set."""
    montage = inst.get_montage()
    if montage is None:
        return {}
    pos = montage.get_positions()
    if pos["coord_frame"] not in ("head", "unknown"):
        return {}
    return {c: p for c, p in pos["ch_pos"].items()
            if c in ch_names and np.all(np.isfinite(p)) and np.any(p != 0)}


def _make_estimator(model, fwd):
    from .estimators import SLORETA, ClassicalCB
    from .pretrained import list_pretrained, load_pretrained

    if not isinstance(model, str):
        from sklearn.base import clone

        return clone(model).set_params(forward=fwd).fit()
    if model in list_pretrained():
        if getattr(fwd, "n_orient", 1) > 1:
            logger.warning("%s was trained for fixed-orientation EEG; a free-orientation "
                           "forward model is solved by ClassicalCB at the same depth", model)
            return ClassicalCB(fwd).fit()
        return load_pretrained(model, forward=fwd, backend="onnx")
    if model.lower() == "classicalcb":
        return ClassicalCB(fwd).fit()
    if model.lower() == "sloreta":
        return SLORETA(fwd).fit()
    raise ValueError(f"unknown model {model!r}: use 'ClassicalCB', 'sLORETA', one of "
                     f"{list_pretrained()} or an estimator")


def _needs_noise(est):
    """Known-noise solvers (``noise_var`` in ``predict``)."""
    if hasattr(est, "learn_noise_"):
        return not est.learn_noise_
    if hasattr(est, "learn_noise"):
        return not est.learn_noise
    return getattr(est, "noise", None) == "known"


def _estimator_forward(model, forward):
    """The forward model to use: ``forward``, else the estimator's own one.

    An estimator's ``forward`` parameter is its user's choice: it wins over the
    template search, and contradicting it with another ``forward`` is an error.
    """
    own = None if isinstance(model, str) else model.get_params().get("forward")
    if own is None:
        return forward
    if forward is not None and forward is not own and not (
            isinstance(own, str) and isinstance(forward, str) and own == forward):
        raise ValueError(f"the estimator has forward={own!r} but apply() got forward="
                         f"{forward!r}: give one of them")
    return own


def noise_variances(inst, ch_names, noise_cov):
    """Per-channel noise variances (V^2) of the data that ``apply`` solves, shape (N,).

    Parameters
    ----------
    inst : mne.Evoked | mne.Epochs
        The recording, before cropping to the analysis window.
    ch_names : list of str
        Channels in the order of the forward model (matched case-insensitively).
    noise_cov : mne.Covariance | "baseline"
        A covariance of single-trial noise (from ``mne.compute_covariance`` on
        the baseline of epochs, an empty-room recording, ...), divided by
        ``nave`` for an Evoked as MNE does when whitening evoked data; or
        ``"baseline"``: the variance over the pre-stimulus samples (times < 0)
        of the data themselves, which for an Evoked is already that of the
        average.
    """
    import mne

    if isinstance(noise_cov, str):
        if noise_cov != "baseline":
            raise ValueError(f"noise_cov must be an mne.Covariance or 'baseline', got "
                             f"{noise_cov!r}")
        pre = inst.times < 0
        if pre.sum() < 2:
            raise ValueError("noise_cov='baseline' needs a pre-stimulus interval (times < 0) "
                             f"of 2 samples or more; this recording starts at "
                             f"{inst.times[0]:.3f} s. Pass an mne.Covariance instead")
        baseline = _channel_data(inst, ch_names)[:, :, pre]
        baseline = baseline - baseline.mean(-1, keepdims=True)
        variance = (baseline ** 2).sum((0, 2)) / max(baseline.shape[0] * (pre.sum() - 1), 1)
    elif isinstance(noise_cov, mne.Covariance):
        index = {c.lower(): i for i, c in enumerate(noise_cov.ch_names)}
        missing = [c for c in ch_names if c.lower() not in index]
        if missing:
            raise ValueError(f"noise_cov has no entry for channels {missing}; compute it on "
                             "the same channels or mark those bad")
        full = noise_cov.data
        diag = full if full.ndim == 1 else np.diag(full)
        variance = diag[[index[c.lower()] for c in ch_names]].astype(float)
        if isinstance(inst, mne.Evoked):
            variance = variance / max(inst.nave, 1)
    else:
        raise TypeError(f"noise_cov must be an mne.Covariance or 'baseline', got "
                        f"{type(noise_cov).__name__}")
    if not np.all(np.isfinite(variance)) or np.any(variance <= 0):
        bad = [c for c, v in zip(ch_names, variance) if not (np.isfinite(v) and v > 0)]
        raise ValueError(f"noise variances must be positive and finite; channels {bad} are "
                         "not (flat baseline?): mark them bad")
    return variance


def _quality_checks(inst, ch_names, baseline_applied, drop_bad):
    """Log the data-quality findings of the recording; the channels to keep."""
    from .quality import check_channels, check_units

    data = _channel_data(inst, ch_names)
    findings = check_channels(data, ch_names)
    for finding in findings:
        logger.warning(finding["message"])
    units = check_units(data)
    if units:
        logger.warning(units)
    harmful = [f["channel"] for f in findings if f["problem"] != "dc_offset"
               or not baseline_applied]
    if drop_bad == "auto" and harmful:
        logger.warning("dropping %s (drop_bad='auto'; drop_bad='none' keeps them)",
                       ", ".join(harmful))
        return [c for c in ch_names if c not in harmful]
    return ch_names


@dataclass(frozen=True)
class SolverReport:
    """What answered one estimate of :func:`apply`, attached as ``stc.solver_report``.

    Attributes
    ----------
    model : str
        The model asked for.
    solver : str
        The solver that answered, for titles and logs: ``model``, or e.g.
        ``"deep-cb-joint, solved by the classical updates (regime check)"``.
    classical_fallback : bool
        A learned model's regime check handed this estimate to the classical updates.
    empty : bool
        No source rises above the noise: the solver pruned every source (the
        sources put less than ``EMPTY_LEVEL_DB`` of the data's power on the
        sensors).  The estimate is then (close to) zero and has no peaks.
    signal_level_db : float | None
        Power the estimate's sources put on the sensors relative to the data's
        (dB); None for solvers without source variances (sLORETA).
    data_to_noise_db : float | None
        The data's power relative to the noise model's (given or learned; dB).
    """

    model: str
    solver: str
    classical_fallback: bool = False
    empty: bool = False
    signal_level_db: float | None = None
    data_to_noise_db: float | None = None

    def describe_empty(self):
        """The warning for an empty estimate (one line)."""
        level = ("" if self.data_to_noise_db is None else
                 f"the data are {self.data_to_noise_db:+.1f} dB relative to the noise "
                 "model, and ")
        return (f"{self.solver}: no source rises above the noise: {level}the estimate's "
                f"sources explain {self.signal_level_db:.0f} dB of the data's power "
                f"(empty below {EMPTY_LEVEL_DB:.0f} dB). The estimate is empty; check "
                "the noise covariance (a noisy baseline?) and the time window")


def solver_label(name, classical_fallback):
    """Name of the solver that answered: ``name``, or ``name`` solved classically."""
    return f"{name}, solved by the classical updates (regime check)" if classical_fallback \
        else name


def _reports(estimator, name, n_samples):
    """One :class:`SolverReport` per estimate of the estimator's last ``predict``."""
    fallback = getattr(estimator, "classical_fallback_", None)
    fallback = np.zeros(n_samples, bool) if fallback is None else np.asarray(fallback, bool)
    try:
        level = estimator.signal_level_db_
        empty = estimator.empty_
        noise = np.mean(estimator.noise_var_, axis=1)
        power = estimator._data_power
        with np.errstate(divide="ignore", invalid="ignore"):
            snr = 10 * np.log10(power / noise)
    except AttributeError:  # no source variances (sLORETA, user estimators)
        level = empty = snr = [None] * n_samples
    return [SolverReport(model=name, solver=solver_label(name, bool(f)),
                         classical_fallback=bool(f), empty=bool(e),
                         signal_level_db=None if lv is None else float(lv),
                         data_to_noise_db=None if s is None or not np.isfinite(s) else
                         float(s))
            for f, e, lv, s in zip(fallback, empty, level, snr)]


def _log_reports(reports, name, evoked):
    """Say (INFO) which solver answered when the regime check handed estimates to the
    classical updates, and (WARNING) which estimates are empty."""
    fallback = [r for r in reports if r.classical_fallback]
    if fallback:
        what = "the evoked response was" if evoked else (
            f"{len(fallback)} of {len(reports)} epochs were")
        logger.info("%s: %s solved by the classical updates at the same depth (regime "
                    "check: data outside the trained regime, or an estimate denser than "
                    "the corrections help on)", name, what)
    empty = [r for r in reports if r.empty]
    if evoked and empty:
        logger.warning(empty[0].describe_empty())
    elif empty:
        logger.warning("%d of %d epochs: no source rises above the noise (empty estimates,"
                       " stc.solver_report.empty); e.g. %s", len(empty), len(reports),
                       empty[0].describe_empty())


def _check_pick_ori(fwd, pick_ori):
    """``pick_ori`` checked against ``fwd`` (before solving); returns its ``n_orient``."""
    if pick_ori not in (None, "normal", "vector"):
        raise ValueError(f"pick_ori must be None, 'normal' or 'vector', got {pick_ori!r}")
    n_orient = getattr(fwd, "n_orient", 1)
    if n_orient == 1 and pick_ori == "vector":
        raise ValueError("pick_ori='vector' needs a free-orientation forward model "
                         "(ForwardModel.from_mne(fwd, orientation='free'))")
    return n_orient


def _oriented(sources, fwd, pick_ori):
    """Sources (n, n_orient * M, T) of a forward model as ``pick_ori`` asks: one value
    per location ((n, M, T): fixed orientation as it is, free orientation as the
    dipole's length with ``None`` or its normal component with ``"normal"``) or the
    dipole in x, y, z ((n, M, 3, T), ``"vector"``)."""
    n_orient = _check_pick_ori(fwd, pick_ori)
    if n_orient == 1:
        return sources
    vectors = sources.reshape(sources.shape[0], -1, n_orient, sources.shape[-1])
    if pick_ori == "vector":  # in x, y, z as MNE's vector estimates: the columns' directions
        if fwd.normals is None or fwd.normals.shape != (fwd.n_sources, 3):
            return vectors
        directions = fwd.normals.reshape(-1, n_orient, 3)
        return np.einsum("nmkt,mkd->nmdt", vectors, directions)
    if pick_ori == "normal":  # surface coordinates: the last dipole is the normal one
        return vectors[:, :, -1]
    return np.linalg.norm(vectors, axis=2)


def _source_estimate(data, fwd, tmin, tstep):
    """The MNE source estimate class for ``data`` (M, T) or (M, 3, T) on ``fwd``'s
    source space: surface (two hemispheres) or volume/discrete (one)."""
    import mne

    vector = data.ndim == 3
    if len(fwd.vertices) == 2:
        cls = mne.VectorSourceEstimate if vector else mne.SourceEstimate
    else:
        cls = mne.VolVectorSourceEstimate if vector else mne.VolSourceEstimate
    return cls(data, vertices=fwd.vertices, tmin=tmin, tstep=tstep, subject=fwd.subject)


def apply(inst, model="ClassicalCB", forward=None, tmin=None, tmax=None,
          baseline=(None, 0), noise_cov=None, drop_bad="auto", return_forward=False,
          pick_ori=None, picks=None, loose="auto", whiten="auto"):
    """Estimate cortical sources of an ``mne.Evoked`` or ``mne.Epochs``.

    Parameters
    ----------
    inst : mne.Evoked | mne.Epochs
        EEG recording with standard channel names; bad channels are ignored.
    model : str | estimator
        ``"ClassicalCB"`` (default: the solver with the best evidence on
        recorded EEG, see the documentation's "Which model" page),
        ``"sLORETA"``, a shipped model (run with onnxruntime, e.g.
        ``"deep-cb-joint"``), or an unfitted estimator with a ``forward``
        parameter (its own forward model, when set, is used).
    forward : str | ForwardModel | mne.Forward | None
        Forward model holding the recording's channels (e.g. the user's own
        ``mne.Forward``); default: the estimator's own, else the first shipped
        template that has them all, else a template built offline for exactly
        these channels (standard 10-05 names, or the positions of the
        recording's montage) and cached.  For MEG and MEG+EEG the default is
        a forward model on fsaverage built offline for the recording's sensors
        and digitisation (:func:`~unfolded_sbl.templates.forward_for_recording`)
        and cached.
    tmin, tmax : float | None
        Time window (s) to localise.
    baseline : tuple | None
        Baseline correction ``(start, end)`` in seconds, as
        ``mne.Evoked.apply_baseline``, applied before cropping when the
        recording has pre-stimulus samples (times < 0): a channel's DC offset
        would otherwise dominate the window.  None keeps the data as they are.
    noise_cov : mne.Covariance | "baseline" | None
        Sensor noise for known-noise solvers (``deep-cb-known``,
        ``ClassicalCB(noise="known")``; with ``model="ClassicalCB"`` it selects
        the known-noise solver): see :func:`noise_variances`.  Joint-noise
        models learn the noise and do not need it.
    drop_bad : {"auto", "none"}
        The recording is checked before solving (:mod:`unfolded_sbl.quality`:
        flat, noisy and DC-offset channels, data scale, window length) and
        every finding is logged with the channel's name.  ``"auto"`` drops
        flat and noisy channels, and offset channels when no baseline
        correction removes the offset; ``"none"`` keeps every channel.
    return_forward : bool
        Also return the :class:`ForwardModel` used (its channels and geometry; one
        column per location, :meth:`ForwardModel.locations`; whitened for MEG).
    pick_ori : None | "normal" | "vector"
        With a free-orientation forward model
        (``ForwardModel.from_mne(fwd, orientation="free")``), as MNE's
        ``apply_inverse``: None gives each location's dipole length, ``"normal"``
        its component normal to the cortex, ``"vector"`` the three components
        (an ``mne.VectorSourceEstimate``).  Fixed orientation: None or "normal".
    loose : float in [0, 1] | "auto"
        Orientation constraint of a free-orientation forward model, as MNE's
        inverse solvers: the tangential dipoles' prior variance relative to the
        normal one (0: fixed, 1: free); ``"auto"`` is 0.2 on a cortical surface,
        1 on a volume source space and 0 for a fixed-orientation model
        (:func:`~unfolded_sbl.forward.loose_model`).
    whiten : "auto" | bool
        Solve the sensors projected and whitened by ``noise_cov`` as MNE does
        (the ``picks`` paragraph): ``"auto"`` for MEG and MEG+EEG (which need
        it), ``True`` for EEG too (its full noise covariance, the electrodes'
        digitised positions when ``forward`` is None, loose orientation),
        ``False`` never (EEG only: the learned models' path, in volts with
        per-channel noise).
    picks : str | list of str | None
        Channel types to localise: ``"eeg"``, ``"meg"`` (``"mag"``, ``"grad"``) or
        ``"meg,eeg"``; default EEG when the recording has EEG, else MEG.  MEG and
        MEG+EEG are projected (the recording's SSP projectors) and whitened by
        ``noise_cov`` (required: an ``mne.Covariance``, a ``-cov.fif`` or
        ``"baseline"``; scaled by ``1 / nave`` for an Evoked), rank-aware, and
        solved with unit noise by ``ClassicalCB`` or ``sLORETA``; ``forward``
        must then be an ``mne.Forward`` (or ``-fwd.fif``) with the sensors (a
        free-orientation one solves three dipoles per location) or None.

    Returns
    -------
    stc : mne.SourceEstimate, or a list of them (one per epoch) for Epochs
        (``mne.VectorSourceEstimate`` with ``pick_ori="vector"``; the volume
        classes for a volume source space)
        Each carries ``stc.solver_report`` (:class:`SolverReport`): the solver
        that answered (a learned model's regime check may hand the data to the
        classical updates) and whether the estimate is *empty*: a sparse
        Bayesian solver prunes every source when the noise model explains the
        data, its answer to "which source rises above the noise?" being "none";
        that is logged as a warning with the data's power relative to the noise.
    forward : ForwardModel
        Only with ``return_forward``.
    """
    import mne

    if not isinstance(inst, (mne.Evoked, mne.BaseEpochs)):
        raise TypeError(f"inst must be an mne.Evoked or mne.Epochs, got {type(inst).__name__}")
    if drop_bad not in ("auto", "none"):
        raise ValueError(f"drop_bad must be 'auto' or 'none', got {drop_bad!r}")
    from .meg import apply_whitened, default_picks, parse_picks

    kinds = parse_picks(picks) if picks is not None else default_picks(inst)
    if whiten not in ("auto", True, False):
        raise ValueError(f"whiten must be 'auto', True or False, got {whiten!r}")
    if whiten is False and kinds != ("eeg",):
        raise ValueError(f"picks={'/'.join(kinds)} needs whiten='auto' or True: MEG is "
                         "solved whitened by a noise covariance")
    if kinds != ("eeg",) or whiten is True:
        stcs, estimator, white = apply_whitened(inst, model, forward, tmin, tmax, baseline,
                                                noise_cov, kinds, pick_ori, loose)
        name = model if isinstance(model, str) else type(model).__name__
        for stc, report in zip(stcs, _reports(estimator, name, len(stcs))):
            stc.solver_report = report
        out = stcs[0] if isinstance(inst, mne.Evoked) else stcs
        return (out, white.locations()) if return_forward else out
    inst = inst.copy()
    ch_names = _eeg_channels(inst)
    use_baseline = baseline is not None and inst.times[0] < 0
    ch_names = _quality_checks(inst, ch_names, use_baseline, drop_bad)
    if use_baseline:
        inst.apply_baseline(baseline, verbose=False)
    noise_var = None if noise_cov is None else noise_variances(inst, ch_names, noise_cov)
    inst.crop(tmin, tmax)
    from .quality import check_window

    short = check_window(len(inst.times))
    if short:
        logger.warning(short)
    forward = _estimator_forward(model, forward)
    fwd = forward_for_channels(ch_names, forward, positions=_montage_positions(inst, ch_names),
                               log=logger.warning)
    if fwd.vertices is None:
        raise ValueError("the forward model has no surface vertices for a SourceEstimate")
    fwd, scale = loose_model(fwd, loose)
    _check_pick_ori(fwd, pick_ori)
    X = _channel_data(inst, ch_names)
    if noise_var is not None and isinstance(model, str) and model.lower() == "classicalcb":
        from .estimators import ClassicalCB

        model = ClassicalCB(noise="known")
    estimator = _make_estimator(model, fwd)
    name = model if isinstance(model, str) else type(model).__name__
    kwargs = {}
    if _needs_noise(estimator):
        if noise_var is None:
            raise ValueError(f"{name} solves with known sensor noise: pass noise_cov= (an "
                             "mne.Covariance, or 'baseline' to estimate it from the "
                             "pre-stimulus interval), or use a joint-noise model")
        kwargs["noise_var"] = np.tile(noise_var, (len(X), 1))
    elif noise_var is not None:
        logger.warning("%s learns the sensor noise jointly: noise_cov is not used", name)
    sources = estimator.predict(X, **kwargs)
    if scale is not None:
        sources = sources * scale[:, None]
    sources = _oriented(sources, fwd, pick_ori)
    reports = _reports(estimator, name, len(sources))
    _log_reports(reports, name, isinstance(inst, mne.Evoked))
    stcs = []
    for estimate, report in zip(sources, reports):
        stc = _source_estimate(estimate, fwd, inst.times[0], 1.0 / inst.info["sfreq"])
        stc.solver_report = report
        stcs.append(stc)
    out = stcs[0] if isinstance(inst, mne.Evoked) else stcs
    return (out, fwd.locations()) if return_forward else out
