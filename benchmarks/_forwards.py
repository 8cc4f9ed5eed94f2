"""Forward models the benchmarks need beyond the shipped templates: other caps and source
spaces, built once with the template builder and cached under ``benchmarks/_work``."""

import unfolded_sbl as us


def template_or_built(cap, spacing, perturbed, work, montage=None, verbose=True):
    """The shipped template ``CAP-SPACING[-perturbed]``, else the same built once into
    ``work`` by ``templates.make_template_forward`` (``montage``: what the builder takes
    for the cap, default ``cap``; ``perturbed`` as the shipped perturbed templates)."""
    name = f"{cap}-{spacing}" + ("-perturbed" if perturbed else "")
    if name in us.list_forwards():
        return us.load_forward(name)
    from unfolded_sbl.templates import make_template_forward

    path = work / f"{name}.npz"
    if not path.exists():
        if verbose:
            print(f"building forward model: {name}", flush=True)
        work.mkdir(parents=True, exist_ok=True)
        us.ForwardModel.from_mne(make_template_forward(
            cap if montage is None else montage, spacing, perturbed=perturbed),
            name=name).save(path)
    return us.ForwardModel.load(path)
