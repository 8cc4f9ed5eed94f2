"""Headless cortical maps of source estimates (matplotlib through nilearn).

Template source spaces are subsets of fsaverage5 (ico5) vertices, so a map is
drawn on nilearn's packaged inflated fsaverage5 meshes: every mesh vertex takes
the value of its nearest source (no download, no 3-D backend, no display).
"""

from __future__ import annotations

import functools

import numpy as np

HEMIS = ("left", "right")
VIEWS = ("lateral", "medial", "posterior")


@functools.lru_cache(maxsize=1)
def _fsaverage5():
    """nilearn's packaged fsaverage5 meshes and sulcal depth (read once per process)."""
    from nilearn import datasets

    meshes = datasets.load_fsaverage("fsaverage5")
    sulcal = datasets.load_fsaverage_data(mesh="fsaverage5", data_type="sulcal")
    return meshes, sulcal


def surface_texture(source_map, forward):
    """Per-hemisphere textures on fsaverage5 from a map over the sources.

    Parameters
    ----------
    source_map : array, shape (n_sources,)
    forward : ForwardModel
        A template forward model (with ``vertices`` on fsaverage).

    Returns
    -------
    textures : dict of {"left", "right"} -> array, shape (10242,)
    """
    from scipy.spatial import cKDTree

    source_map = np.asarray(source_map, float)
    if forward.vertices is None or len(forward.vertices) != 2:
        raise ValueError("cortical maps need a surface source space on fsaverage "
                         "(forward.vertices with two hemispheres)")
    if source_map.shape != (forward.n_sources,):
        raise ValueError(f"source_map must have shape ({forward.n_sources},), "
                         f"got {source_map.shape}")
    mesh = _fsaverage5()[0]["pial"]
    textures, start = {}, 0
    for hemi, vertno in zip(HEMIS, forward.vertices):
        coords = np.asarray(mesh.parts[hemi].coordinates)
        if vertno.max() >= len(coords):
            raise ValueError("the source space is not a subset of fsaverage5 vertices")
        values = source_map[start:start + len(vertno)]
        _, nearest = cKDTree(coords[vertno]).query(coords)
        textures[hemi] = values[nearest]
        start += len(vertno)
    return textures


def plot_source_maps(maps, forward, views=(("left", "lateral"), ("right", "lateral")),
                     titles=None, threshold=0.1, fname=None, dpi=90):
    """Grid of cortical maps: one row per map, one column per (hemisphere, view).

    Each map is shown as its absolute value relative to its own maximum, with
    values below ``threshold`` transparent (as the F1 support).

    Parameters
    ----------
    maps : sequence of array, shape (n_sources,)
    forward : ForwardModel
    views : sequence of (hemi, view)
        ``hemi`` in {"left", "right"}, ``view`` in {"lateral", "medial",
        "posterior", "dorsal", "ventral", "anterior"}.
    titles : sequence of str | None
    threshold : float
    fname : str | Path | None
        Write a PNG there.

    Returns
    -------
    fig : matplotlib.figure.Figure
    """
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    from nilearn import plotting

    meshes, sulcal = _fsaverage5()
    inflated = meshes["inflated"]
    n_rows, n_cols = len(maps), len(views)
    fig, axes = plt.subplots(n_rows, n_cols, figsize=(2.6 * n_cols, 2.4 * n_rows),
                             subplot_kw={"projection": "3d"}, squeeze=False)
    for row, source_map in enumerate(maps):
        magnitude = np.abs(np.asarray(source_map, float))
        peak = magnitude.max()
        textures = surface_texture(magnitude / peak if peak > 0 else magnitude, forward)
        for col, (hemi, view) in enumerate(views):
            ax = axes[row, col]
            plotting.plot_surf_stat_map(
                inflated.parts[hemi], textures[hemi], hemi=hemi, view=view,
                bg_map=np.asarray(sulcal.data.parts[hemi]), threshold=threshold, vmax=1.0,
                cmap="hot", colorbar=False, engine="matplotlib", axes=ax, figure=fig)
            if row == 0:
                ax.set_title(f"{hemi} {view}", fontsize=8)
        if titles is not None:
            axes[row, 0].text2D(-0.1, 0.5, titles[row], transform=axes[row, 0].transAxes,
                                rotation=90, va="center", ha="right", fontsize=9)
    fig.subplots_adjust(left=0.08, right=0.99, top=0.93, bottom=0.01, wspace=0.0,
                        hspace=0.05)
    if fname is not None:
        fig.savefig(fname, dpi=dpi)
        plt.close(fig)
    return fig
