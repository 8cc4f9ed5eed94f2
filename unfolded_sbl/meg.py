"""MEG and combined MEG+EEG: channel picks, projections and whitening.

Magnetometers, gradiometers and electrodes measure in different units with
different noise, so MNE's inverse solvers solve them together after whitening
by a noise covariance: the data and the gain are projected by the recording's
SSP projectors (the EEG average reference among them) and multiplied by the
whitener of the noise covariance, rank-aware (projectors and Maxwell filtering
reduce the rank; ``mne.cov.compute_whitener`` with ``pca=True`` keeps the
whitened components that carry data).  The whitened problem has unit sensor
noise, which the known-noise solvers take as given.

The forward model is the user's own (an ``mne.Forward`` with the recording's
sensors, e.g. from ``mne.make_forward_solution``), else one built offline on
fsaverage for the recording's sensors and digitisation
(:func:`unfolded_sbl.templates.forward_for_recording`) and cached.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

logger = logging.getLogger("unfolded_sbl")

#: What ``picks`` may name, and the channel types each stands for.
PICKS = {"eeg": ("eeg",), "meg": ("mag", "grad"), "mag": ("mag",), "grad": ("grad",)}


def parse_picks(picks):
    """``picks`` ("eeg", "meg", "mag", "grad", a comma-separated list of them, or a
    list) as a tuple of MNE channel types."""
    if isinstance(picks, str):
        picks = [p.strip() for p in picks.split(",")]
    if not picks or any(p not in PICKS for p in picks):
        raise ValueError(f"picks must name channel types among {sorted(PICKS)} (e.g. 'meg', "
                         f"'eeg' or 'meg,eeg'), got {picks!r}")
    return tuple(sorted({kind for p in picks for kind in PICKS[p]}))


def default_picks(inst):
    """EEG when the recording has good EEG channels (as before MEG was supported),
    else MEG."""
    kinds = {k for c, k in zip(inst.ch_names, inst.get_channel_types())
             if c not in inst.info["bads"]}
    if "eeg" in kinds or not kinds & {"mag", "grad"}:
        return ("eeg",)
    return tuple(sorted(kinds & {"mag", "grad"}))


def read_noise_cov(noise_cov, inst):
    """``noise_cov`` as an ``mne.Covariance``: given, read from a ``-cov.fif``, or
    ``"baseline"``: computed on the pre-stimulus samples (Epochs; for an Evoked, of
    the averaged baseline, scaled to single trials by ``nave``)."""
    import mne

    if isinstance(noise_cov, mne.Covariance):
        return noise_cov
    if noise_cov is None:
        raise ValueError("MEG and combined MEG+EEG need noise_cov= (an mne.Covariance, a "
                         "-cov.fif file or 'baseline') to whiten the sensors together")
    if noise_cov == "baseline":
        if inst.times[0] >= 0:
            raise ValueError("noise_cov='baseline' needs a pre-stimulus interval (times < 0)")
        if isinstance(inst, mne.BaseEpochs):
            return mne.compute_covariance(inst, tmax=0.0, verbose=False)
        data = inst.copy().crop(None, 0.0).data
        data = data - data.mean(axis=1, keepdims=True)
        cov = data @ data.T / max(data.shape[1] - 1, 1) * max(inst.nave, 1)
        return mne.Covariance(cov, inst.ch_names, inst.info["bads"], inst.info["projs"],
                              nfree=data.shape[1] - 1, verbose=False)
    return mne.read_cov(str(noise_cov), verbose=False)


def _projector(info):
    """The matrix of ``info``'s SSP projectors (identity without any): the projectors
    applied, by MNE, to the identity's columns."""
    import mne

    eye = mne.EvokedArray(np.eye(info["nchan"]), info, verbose=False)
    return eye.apply_proj(verbose=False).data


def whitened_problem(inst, forward, noise_cov, picks, orientation="fixed"):
    """The recording and forward model projected and whitened together.

    Parameters
    ----------
    inst : mne.Evoked | mne.Epochs
        Cropped to the window to solve.
    forward : mne.Forward
        Holding the picked channels.
    noise_cov : mne.Covariance
        Of single trials (scaled by ``nave`` for an Evoked, as MNE does).
    picks : tuple of str
        Channel types (:func:`parse_picks`).
    orientation : {"fixed", "free"}

    Returns
    -------
    data : ndarray, shape (n_epochs, rank, n_times)
        Whitened data (unit noise).
    white : ForwardModel
        The whitened gain (``rank`` rows, no average reference: the projectors
        carry it), with the source space of ``forward``.
    ch_names : list of str
        The channels used.
    """
    import mne

    from .forward import ForwardModel

    if not isinstance(forward, mne.Forward):
        raise ValueError("MEG needs a forward model with the recording's MEG sensors: pass "
                         "forward= an mne.Forward (mne.make_forward_solution, or a "
                         "-fwd.fif), or None to build one on fsaverage; the shipped "
                         "templates hold EEG caps only")
    kinds = dict(zip(inst.ch_names, inst.get_channel_types()))
    ch_names = [c for c in inst.ch_names if kinds[c] in picks and c not in inst.info["bads"]
                and c in forward["info"]["ch_names"] and c in noise_cov.ch_names
                and c not in noise_cov["bads"]]
    if not ch_names:
        raise ValueError(f"no good {'/'.join(picks)} channels shared by the recording, the "
                         "forward model and the noise covariance")
    info = mne.pick_info(inst.info, [inst.ch_names.index(c) for c in ch_names])
    fwd = mne.pick_channels_forward(forward, ch_names, ordered=True, verbose=False)
    model = ForwardModel.from_mne(fwd, orientation=orientation, picks=list(picks),
                                  average_reference=False)
    projector = _projector(info)
    whitener, _ = mne.cov.compute_whitener(noise_cov, info, pca=True, verbose=False)
    operator = whitener @ projector
    data = inst.get_data(picks=ch_names)
    data = data[None] if data.ndim == 2 else data
    white = ForwardModel(operator @ model.lead_field, model.positions,
                         [f"white{i:03d}" for i in range(operator.shape[0])],
                         model.adjacency, normals=model.normals, vertices=model.vertices,
                         subject=model.subject, average_reference=False,
                         n_orient=model.n_orient,
                         name=f"{forward['info'].get('description') or 'forward'} "
                              f"({'+'.join(picks)}, whitened)")
    logger.info("whitened %d %s channels to %d components (noise covariance rank)",
                len(ch_names), "/".join(picks), operator.shape[0])
    return np.einsum("rc,ect->ert", operator, data), white, ch_names


def _whitened_estimator(model, white):
    """The solver of a whitened problem (unit sensor noise): ClassicalCB with known
    noise, sLORETA, or the user's ClassicalCB/SLORETA on the whitened gain.  A shipped
    (learned) model was trained on EEG in volts: it runs zero-shot on a fixed-orientation
    whitened problem (torch; the file's in-graph average reference would be wrong
    here), its regime checks handing samples it does not suit to the classical updates;
    a free or loose orientation is solved by ClassicalCB.  Both are said."""
    from sklearn.base import clone

    from .estimators import SLORETA, ClassicalCB
    from .pretrained import list_pretrained, load_pretrained

    if isinstance(model, (ClassicalCB, SLORETA)):
        est = clone(model).set_params(forward=white)
        return (est.set_params(noise="known") if isinstance(est, ClassicalCB) else est).fit()
    if isinstance(model, str) and model.lower() == "sloreta":
        return SLORETA(white).fit()
    if isinstance(model, str) and model in list_pretrained():
        if white.n_orient == 1:
            logger.warning("%s was trained on EEG in volts; it runs zero-shot on the whitened "
                           "data (its regime checks hand samples it does not suit to the "
                           "classical updates)", model)
            return load_pretrained(model, forward=white)
        logger.warning("%s was trained on EEG in volts with fixed orientation; whitened "
                       "data with a free or loose orientation are solved by ClassicalCB "
                       "(known noise) at the same depth", model)
    elif not (isinstance(model, str) and model.lower() == "classicalcb"):
        raise ValueError(f"whitened MEG/EEG data are solved by 'ClassicalCB', 'sLORETA' or a "
                         f"shipped model (or the first two's estimators), got {model!r}")
    return ClassicalCB(white, noise="known").fit()


def apply_whitened(inst, model, forward, tmin, tmax, baseline, noise_cov, picks, pick_ori,
                   loose="auto"):
    """:func:`unfolded_sbl.apply` for MEG and MEG+EEG: projected and whitened by the
    noise covariance (scaled by ``1 / nave`` for an Evoked, as MNE's
    ``apply_inverse`` does), solved with unit noise under the orientation
    constraint ``loose``; returns (stcs, estimator, whitened forward model)."""
    import mne

    from .forward import loose_model
    from .mne_io import _check_pick_ori, _needs_noise, _oriented, _source_estimate
    from .templates import forward_for_recording

    if isinstance(forward, str) and Path(forward).is_file():
        forward = mne.read_forward_solution(forward, verbose=False)
    inst = inst.copy()
    cov = read_noise_cov(noise_cov, inst)  # a missing one is named before any build
    if forward is None:
        forward = forward_for_recording(inst.info, picks, log=logger.warning)
    if isinstance(inst, mne.Evoked) and inst.nave > 1:
        cov = cov.copy()
        cov["data"] = cov["data"] / inst.nave
    if baseline is not None and inst.times[0] < 0:
        inst.apply_baseline(baseline, verbose=False)
    inst.crop(tmin, tmax)
    orientation = ("free" if isinstance(forward, mne.Forward)
                   and not mne.forward.is_fixed_orient(forward) else "fixed")
    data, white, _ = whitened_problem(inst, forward, cov, picks, orientation)
    white, scale = loose_model(white, loose)
    _check_pick_ori(white, pick_ori)
    estimator = _whitened_estimator(model, white)
    kwargs = {}
    if _needs_noise(estimator):
        kwargs["noise_var"] = np.ones(data.shape[:2])
    sources = estimator.predict(data, **kwargs)
    if scale is not None:
        sources = sources * scale[:, None]
    sources = _oriented(sources, white, pick_ori)
    stcs = [_source_estimate(s, white, inst.times[0], 1.0 / inst.info["sfreq"])
            for s in sources]
    return stcs, estimator, white
