"""MNE integration: source imaging of ``mne.Evoked`` / ``mne.Epochs`` recordings.

``apply`` matches the recording's EEG channels to a forward model by name
(case-insensitive), takes the matching rows of the lead field (re-referenced
to the average of those channels, as the data are), runs a solver and returns
``mne.SourceEstimate`` objects on fsaverage.
"""

from __future__ import annotations

import logging

import numpy as np

from .forward import ForwardModel, as_forward

logger = logging.getLogger("unfolded_sbl")

#: Templates searched, in order, for a recording's channel names.
TEMPLATE_SEARCH = ("biosemi64-ico3", "things63-ico3", "biosemi128-ico3")


def _eeg_channels(inst):
    """Names of good EEG channels with signal (flat channels are dropped)."""
    import mne

    picks = mne.pick_types(inst.info, eeg=True, exclude="bads")
    if len(picks) == 0:
        raise ValueError("the recording has no good EEG channels")
    data = inst.get_data(picks=picks) if hasattr(inst, "get_data") else inst.data[picks]
    flat = np.std(data.reshape(len(picks), -1) if data.ndim == 2 else
                  np.moveaxis(data, 1, 0).reshape(len(picks), -1), axis=1) == 0
    if flat.any():
        logger.warning("dropping flat channels: %s", [inst.ch_names[p] for p in picks[flat]])
    return [inst.ch_names[p] for p in picks[~flat]]


def _subset(fwd, ch_names):
    """Rows of ``fwd`` for ``ch_names`` (case-insensitive), or the missing names."""
    index = {name.lower(): i for i, name in enumerate(fwd.ch_names)}
    missing = [c for c in ch_names if c.lower() not in index]
    if missing:
        return None, missing
    rows = [index[c.lower()] for c in ch_names]
    return ForwardModel(fwd.lead_field[rows], fwd.positions, list(ch_names), fwd.adjacency,
                        normals=fwd.normals,
                        ch_pos=None if fwd.ch_pos is None else fwd.ch_pos[rows],
                        vertices=fwd.vertices, subject=fwd.subject, name=fwd.name), []


def forward_for_channels(ch_names, forward=None, positions=None, log=print):
    """A forward model with exactly ``ch_names`` (matched case-insensitively).

    With ``forward`` given, its matching rows (a clear error lists channels it
    lacks).  Otherwise the first shipped template holding every channel
    (:data:`TEMPLATE_SEARCH`), else a template built offline for these channels
    and cached (:func:`unfolded_sbl.templates.forward_for_montage`): 10-05 names
    take their standard positions, other channels their entry in ``positions``
    (head frame, metres).
    """
    if forward is not None:
        fwd = as_forward(forward)
        sub, missing = _subset(fwd, ch_names)
        if missing:
            raise ValueError(f"channels missing from the forward model {fwd.name!r}: "
                             f"{missing}; mark them bad or pass a forward model with them")
        return sub
    for name in TEMPLATE_SEARCH:
        sub, _ = _subset(as_forward(name), ch_names)
        if sub is not None:
            return sub
    from .templates import forward_for_montage

    return forward_for_montage(ch_names, positions=positions, log=log)


def _montage_positions(inst, ch_names):
    """Head-frame positions of ``ch_names`` from the recording's montage, where set."""
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
    from .zoo import list_pretrained, load_pretrained

    if not isinstance(model, str):
        from sklearn.base import clone

        return clone(model).set_params(forward=fwd).fit()
    if model in list_pretrained():
        return load_pretrained(model, forward=fwd, backend="onnx")
    if model.lower() == "classicalcb":
        return ClassicalCB(fwd).fit()
    if model.lower() == "sloreta":
        return SLORETA(fwd).fit()
    raise ValueError(f"unknown model {model!r}: use 'ClassicalCB', 'sLORETA', one of "
                     f"{list_pretrained()} or an estimator")


def apply(inst, model="deep-cb-joint", forward=None, tmin=None, tmax=None,
          return_forward=False):
    """Estimate cortical sources of an ``mne.Evoked`` or ``mne.Epochs``.

    Parameters
    ----------
    inst : mne.Evoked | mne.Epochs
        EEG recording with standard channel names; bad channels are ignored.
    model : str | estimator
        A shipped model (run with onnxruntime), ``"ClassicalCB"``,
        ``"sLORETA"``, or an unfitted estimator with a ``forward`` parameter.
    forward : str | ForwardModel | mne.Forward | None
        Forward model holding the recording's channels (e.g. the user's own
        ``mne.Forward``); default: the first shipped template that has them
        all, else a template built offline for exactly these channels (standard
        10-05 names, or the positions of the recording's montage) and cached.
    tmin, tmax : float | None
        Time window (s) to localise.
    return_forward : bool
        Also return the :class:`ForwardModel` used (its channels and geometry).

    Returns
    -------
    stc : mne.SourceEstimate, or a list of them (one per epoch) for Epochs
    forward : ForwardModel
        Only with ``return_forward``.
    """
    import mne

    if not isinstance(inst, (mne.Evoked, mne.BaseEpochs)):
        raise TypeError(f"inst must be an mne.Evoked or mne.Epochs, got {type(inst).__name__}")
    inst = inst.copy().crop(tmin, tmax)
    ch_names = _eeg_channels(inst)
    fwd = forward_for_channels(ch_names, forward, positions=_montage_positions(inst, ch_names),
                               log=logger.warning)
    if fwd.vertices is None:
        raise ValueError("the forward model has no surface vertices for a SourceEstimate")
    picks = [inst.ch_names.index(c) for c in ch_names]
    if isinstance(inst, mne.Evoked):
        X = inst.data[picks][None]
    else:
        X = inst.get_data(picks=picks)
    estimator = _make_estimator(model, fwd)
    sources = estimator.predict(X)
    stcs = [mne.SourceEstimate(s, vertices=fwd.vertices, tmin=inst.times[0],
                               tstep=1.0 / inst.info["sfreq"], subject=fwd.subject)
            for s in sources]
    out = stcs[0] if isinstance(inst, mne.Evoked) else stcs
    return (out, fwd) if return_forward else out
