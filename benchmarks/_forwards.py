"""Forward models the benchmarks need beyond the shipped templates: other caps and source
spaces, built once with the template builder and cached under ``benchmarks/_work``."""


def template_or_built(cap, spacing, perturbed, work, montage=None, verbose=True):
    """The shipped template ``CAP-SPACING[-perturbed]``, else the same built once into
    ``work`` (:func:`unfolded_sbl.resolve.template_forward`; ``montage``: what the builder
    takes for the cap, default ``cap``; ``perturbed`` as the shipped perturbed templates)."""
    from unfolded_sbl.resolve import template_forward

    return template_forward(cap, spacing, "perturbed" if perturbed else "nominal",
                            cache_dir=work, montage=montage,
                            log=(lambda m: print(m, flush=True)) if verbose else None)
