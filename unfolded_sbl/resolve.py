"""One place that answers "the forward model of this name, file or recording".

:func:`resolve_forward` turns whatever a user gives (a template name, an MNE
standard montage, a ``-fwd.fif`` or ``.npz`` file, a ``ForwardModel``, an
``mne.Forward``, or nothing but a recording's channel names) into the
:class:`~unfolded_sbl.ForwardModel` to solve with: converted, matched to the
recording's channels, found among the shipped templates or built offline and
cached.  The estimators, ``apply``, ``localize``, ``load_pretrained``,
``train`` and the benchmarks all go through it.
"""

from __future__ import annotations

from pathlib import Path

from .forward import (
    ForwardModel,
    as_forward,
    find_template,
    list_forwards,
    load_forward,
)

#: Templates searched, in order, for a recording's channel names.
TEMPLATE_SEARCH = ("biosemi64-ico3", "things63-ico3", "biosemi128-ico3")


def resolve_forward(forward=None, ch_names=None, positions=None, log=print):
    """The forward model to solve with.

    Parameters
    ----------
    forward : str | Path | ForwardModel | mne.Forward | None
        A shipped template name (:func:`~unfolded_sbl.list_forwards`), the name
        of an MNE standard montage (a template is built offline for its
        channels and cached), a file (``-fwd.fif``, or a ``.npz`` written by
        :meth:`ForwardModel.save`), a ForwardModel or an ``mne.Forward``.  None:
        the first shipped template holding every one of ``ch_names``, else one
        built for them; without ``ch_names``, the embedded default.
    ch_names : sequence of str | None
        A recording's channels: the result has exactly these rows, in this order
        (matched case-insensitively, re-referenced over them).
    positions : dict of str -> array (3,) | None
        Head-frame positions (m) for channels without a standard 10-05 name,
        used when a template must be built.
    log : callable | None
        Messages about building.

    Returns
    -------
    forward : ForwardModel
    """
    if forward is None:
        if ch_names is None:
            return load_forward()
        return _for_channels(list(ch_names), positions, log)
    fwd = _convert(forward, log)
    if ch_names is None:
        return fwd
    return _subset(fwd, list(ch_names))


def _convert(forward, log):
    if isinstance(forward, str) and forward not in list_forwards() and not Path(
            forward).suffix:
        import mne

        if forward not in mne.channels.get_builtin_montages():
            raise ValueError(f"forward {forward!r} is neither a shipped template "
                             f"({', '.join(list_forwards())}), a file nor an MNE standard "
                             "montage (mne.channels.get_builtin_montages())")
        from .templates import forward_for_montage

        montage = mne.channels.make_standard_montage(forward)
        return forward_for_montage(montage.ch_names, log=log)
    return as_forward(forward)


def _subset(fwd, ch_names):
    """Rows of ``fwd`` for ``ch_names`` (case-insensitive), named as the recording
    spells them; a clear error lists the channels it lacks."""
    known = {name.lower() for name in fwd.ch_names}
    missing = [c for c in ch_names if c.lower() not in known]
    if missing:
        raise ValueError(f"channels missing from the forward model {fwd.name!r}: {missing}; "
                         "mark them bad or pass a forward model with them")
    sub = fwd.pick_channels(ch_names)
    sub.ch_names = list(ch_names)  # the recording's spelling: the forward pairs with it
    return sub


def _for_channels(ch_names, positions, log):
    """The first shipped template holding every channel, else one built for them."""
    unmatched = set(ch_names)
    for name in TEMPLATE_SEARCH:
        template = load_forward(name)
        known = {c.lower() for c in template.ch_names}
        missing = {c for c in ch_names if c.lower() not in known}
        if not missing:
            return _subset(template, ch_names)
        unmatched &= missing
    from .templates import forward_for_montage

    if log is not None:
        log(_unmatched_message([c for c in ch_names if c in unmatched], positions or {}))
    return forward_for_montage(ch_names, positions=positions, log=log)


def _unmatched_message(unmatched, positions):
    """Which channels no template has, with a did-you-mean (a misspelt name triggers a
    build for a custom cap)."""
    import difflib

    known = {c.lower(): c for name in TEMPLATE_SEARCH for c in load_forward(name).ch_names}
    hints = []
    for ch in unmatched:
        close = difflib.get_close_matches(ch.lower(), sorted(known), n=1, cutoff=0.6)
        where = "its montage position" if ch in positions else "a standard 10-05 position"
        hints.append(f"{ch} (did you mean {known[close[0]]}?; needs {where})" if close else
                     f"{ch} (needs {where})")
    return (f"{len(unmatched)} channel(s) match no shipped template "
            f"({', '.join(TEMPLATE_SEARCH)}): {'; '.join(hints)}. Building a forward model "
            "offline for this cap (about a minute, cached); rename misspelt channels, mark "
            "them bad, or pass forward= to avoid it.")


def perturbed_variant(forward):
    """The ``-perturbed`` validation template of ``forward``'s cap and spacing with the
    same channels, or None (a forward model that is no template, or a channel subset)."""
    if forward.cap is None or forward.spacing is None:
        return None
    name = find_template(forward.cap, forward.spacing, "perturbed")
    if name is None:
        return None
    perturbed = load_forward(name)
    return perturbed if perturbed.ch_names == forward.ch_names else None


def template_forward(cap, spacing="ico3", variant="nominal", cache_dir=None, montage=None,
                     log=print):
    """The shipped template of ``cap``, ``spacing`` and ``variant``, else the same built
    once with the template builder (:func:`unfolded_sbl.templates.make_template_forward`,
    ``montage``: what the builder takes for the cap, default ``cap``) and cached in
    ``cache_dir`` (default: :func:`unfolded_sbl.templates.default_cache_dir`)."""
    name = find_template(cap, spacing, variant)
    if name is not None:
        return load_forward(name)
    from .templates import default_cache_dir, make_template_forward

    name = f"{cap}-{spacing}" + ("-perturbed" if variant == "perturbed" else "")
    path = Path(cache_dir or Path(default_cache_dir()) / "forward") / f"{name}.npz"
    if not path.exists():
        if log is not None:
            log(f"building forward model: {name}")
        path.parent.mkdir(parents=True, exist_ok=True)
        ForwardModel.from_mne(make_template_forward(
            cap if montage is None else montage, spacing, perturbed=variant == "perturbed"),
            name=name, cap=cap, spacing=spacing, variant=variant).save(path)
    fwd = ForwardModel.load(path)
    fwd.cap, fwd.spacing, fwd.variant = cap, spacing, variant  # caches written before fields
    return fwd
