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


def forward_for_channels(ch_names, forward=None):
    """The rows of a forward model matching ``ch_names`` (case-insensitive).

    ``forward=None`` searches the shipped templates (:data:`TEMPLATE_SEARCH`)
    for one holding every channel.
    """
    candidates = [as_forward(forward)] if forward is not None else [
        as_forward(name) for name in TEMPLATE_SEARCH]
    best_missing = None
    for fwd in candidates:
        index = {name.lower(): i for i, name in enumerate(fwd.ch_names)}
        missing = [c for c in ch_names if c.lower() not in index]
        if not missing:
            rows = [index[c.lower()] for c in ch_names]
            return ForwardModel(fwd.lead_field[rows], fwd.positions, list(ch_names),
                                fwd.adjacency, normals=fwd.normals,
                                ch_pos=None if fwd.ch_pos is None else fwd.ch_pos[rows],
                                vertices=fwd.vertices, subject=fwd.subject, name=fwd.name)
        if best_missing is None or len(missing) < len(best_missing[1]):
            best_missing = (fwd.name, missing)
    raise ValueError(f"channels missing from the forward model {best_missing[0]!r}: "
                     f"{best_missing[1]}; mark them bad or pass a forward model with them")


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


def apply(inst, model="deep-cb-joint", forward=None, tmin=None, tmax=None):
    """Estimate cortical sources of an ``mne.Evoked`` or ``mne.Epochs``.

    Parameters
    ----------
    inst : mne.Evoked | mne.Epochs
        EEG recording with standard channel names; bad channels are ignored.
    model : str | estimator
        A shipped model (run with onnxruntime), ``"ClassicalCB"``,
        ``"sLORETA"``, or an unfitted estimator with a ``forward`` parameter.
    forward : str | ForwardModel | mne.Forward | None
        Forward model holding the recording's channels; default: the first
        shipped template that has them all.
    tmin, tmax : float | None
        Time window (s) to localise.

    Returns
    -------
    stc : mne.SourceEstimate, or a list of them (one per epoch) for Epochs
    """
    import mne

    if not isinstance(inst, (mne.Evoked, mne.BaseEpochs)):
        raise TypeError(f"inst must be an mne.Evoked or mne.Epochs, got {type(inst).__name__}")
    inst = inst.copy().crop(tmin, tmax)
    ch_names = _eeg_channels(inst)
    fwd = forward_for_channels(ch_names, forward)
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
    return stcs[0] if isinstance(inst, mne.Evoked) else stcs
