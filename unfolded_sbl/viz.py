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


# -- report figures ------------------------------------------------------------------
def display_units(units):
    """(factor, label) of the one unit every report uses (axes, tables, CSV): currents
    in A m are shown in nA m (evoked sources are about 1e-9..1e-8 A m); other units
    (sLORETA's standardised map) as they are."""
    return (1e9, "nA m") if units == "A m" else (1.0, units)


def _plot_time_courses(ax, stc, peaks, units):
    """Time courses of the reported peaks, with the map's time marked."""
    factor, units = display_units(units)
    times_ms = 1e3 * stc.times
    for i, peak in enumerate(peaks, 1):
        ax.plot(times_ms, factor * stc.data[peak["source"]], lw=1.3,
                label=f"{i}: {peak['hemisphere']} {peak['region']}")
    if peaks:
        ax.axvline(1e3 * peaks[0]["time_s"], color="k", ls="--", lw=0.8)
    ax.axhline(0, color="0.6", lw=0.5)
    ax.set_xlabel("time (ms)")
    ax.set_ylabel(f"amplitude ({units})")
    ax.legend(fontsize=7, loc="upper left", frameon=False)


def _peak_snapshot(stc, peaks, units):
    """The map the report draws: (|map| in display units, its maximum, the display
    factor and units, the "t = ... ms" label).  The time is the peaks' common one,
    else the time of maximal power."""
    if peaks:
        t_index = int(np.argmin(np.abs(stc.times - peaks[0]["time_s"])))
    else:
        t_index = int(np.argmax((stc.data ** 2).sum(0)))
    factor, display = display_units(units)
    magnitude = factor * np.abs(stc.data[:, t_index])
    return (magnitude, float(magnitude.max()) or 1.0, factor, display,
            f"t = {1e3 * stc.times[t_index]:.0f} ms")


def plot_peak_map(stc, forward, peaks, title="", units="source amplitude", fname=None,
                  threshold=0.1, dpi=100):
    """The map at the peak time in six large views, a colour bar in ``units``, and the
    time courses of the reported peaks.

    Parameters
    ----------
    stc : mne.SourceEstimate
    forward : ForwardModel
        Template forward model of ``stc`` (fsaverage vertices).
    peaks : list of dict
        :func:`unfolded_sbl.localize.peak_report` of ``stc``; the map is drawn
        at their (common) time.
    title : str
    units : str
        Label of the colour bar and time-course axis (e.g. ``"nA m"``).
    fname : str | Path | None
        Write a PNG there.
    threshold : float
        Values below this fraction of the peak are transparent.

    Returns
    -------
    fig : matplotlib.figure.Figure
    """
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    from matplotlib import cm, colors
    from nilearn import plotting

    magnitude, vmax, _, display, time_label = _peak_snapshot(stc, peaks, units)
    textures = surface_texture(magnitude, forward)
    meshes, sulcal = _fsaverage5()
    views = [(h, v) for v in ("lateral", "medial", "posterior") for h in HEMIS]
    fig = plt.figure(figsize=(12, 9.5))
    grid = fig.add_gridspec(2, 4, width_ratios=[1, 1, 1, 0.06], left=0.03, right=0.93,
                            top=0.93, bottom=0.36, hspace=0.12, wspace=0.02)
    for i, (hemi, view) in enumerate(views):
        ax = fig.add_subplot(grid[i % 2, i // 2], projection="3d")
        plotting.plot_surf_stat_map(
            meshes["inflated"].parts[hemi], textures[hemi], hemi=hemi, view=view,
            bg_map=np.asarray(sulcal.data.parts[hemi]), threshold=threshold * vmax,
            vmax=vmax, cmap="hot", colorbar=False, engine="matplotlib", axes=ax, figure=fig)
        ax.set_title(f"{hemi} {view}", fontsize=10)
    cax = fig.add_subplot(grid[:, 3])
    fig.colorbar(cm.ScalarMappable(colors.Normalize(0, vmax), "hot"), cax=cax,
                 label=f"|amplitude| ({display}; below {threshold:.0%} of the peak: not "
                       "shown)")
    # its own margins: the tick labels and the axis label stay inside the figure
    courses = fig.add_gridspec(1, 1, left=0.09, right=0.9, top=0.31, bottom=0.07)
    _plot_time_courses(fig.add_subplot(courses[0, 0]), stc, peaks, units)
    fig.suptitle(f"{title} {time_label}".strip(), fontsize=12)
    if fname is not None:
        fig.savefig(fname, dpi=dpi)
        plt.close(fig)
    return fig


def html_viewer(stc, forward, peaks, fname, title="", units="source amplitude",
                threshold=0.1, message=None):
    """A self-contained HTML page: the rotatable 3-D map at the peak time (nilearn's
    ``view_surf`` with its bundled niivue viewer), the peaks' time courses and their
    table.

    Nothing is fetched from the network when the page is opened: the viewer's
    JavaScript, the meshes and the figure are inline (nilearn's favicon link,
    the one external reference of its page, is removed).  With ``message`` (an
    empty estimate) the page holds that message instead of a map.

    Returns
    -------
    fname : str
    """
    import base64
    import html as html_escape
    import io
    import re
    import warnings

    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    from nilearn import plotting
    from nilearn.surface import SurfaceImage

    if message is not None:
        with open(fname, "w", encoding="utf-8") as fid:
            fid.write(f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>"
                      f"{html_escape.escape(title)}</title></head><body style='font-family:"
                      f"Arial,sans-serif;padding:2em'><h2>{html_escape.escape(title)}</h2>"
                      f"<p id='empty-estimate'>{html_escape.escape(message)}</p></body>"
                      "</html>")
        return str(fname)
    magnitude, vmax, factor, display, time_label = _peak_snapshot(stc, peaks, units)
    meshes, sulcal = _fsaverage5()
    image = SurfaceImage(mesh=meshes["inflated"], data=surface_texture(magnitude, forward))
    with warnings.catch_warnings():  # inflated vs sulcal meshes: same vertices
        warnings.simplefilter("ignore", RuntimeWarning)
        view = plotting.view_surf(surf_map=image, bg_map=sulcal, hemi="both",
                                  threshold=threshold * vmax, vmin=0.0, vmax=vmax,
                                  cmap="hot", symmetric_cmap=False, engine="niivue",
                                  title=f"{title} {time_label} (|{display}|)".strip())
    page = view.get_standalone()
    page = re.sub(r'<link rel="icon"[^>]*?/>', "", page, flags=re.S)
    # the canvas takes 70 % of the window, the report follows below it (in the head:
    # the viewer sizes its canvas when it starts)
    head, body = page.rsplit("</head>", 1)  # the viewer's script holds "</head>" strings
    page = head + (
        "<style>body{height:auto!important;display:block!important}"
        "#gl{display:block;width:100%!important;height:70vh!important}"
        "#unfolded-sbl{font-family:Arial,sans-serif;padding:0 2em 2em}"
        "#unfolded-sbl td,#unfolded-sbl th{padding:2px 10px;text-align:right}</style>"
        "</head>") + body
    fig, ax = plt.subplots(figsize=(9, 3))
    _plot_time_courses(ax, stc, peaks, units)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    plt.close(fig)
    png = base64.b64encode(buffer.getvalue()).decode("ascii")
    rows = "".join(
        f"<tr><td>{i}</td><td>{p['hemisphere']}</td><td>{html_escape.escape(p['region'])}"
        f"</td><td>{p['x_mm']:.0f}</td><td>{p['y_mm']:.0f}</td><td>{p['z_mm']:.0f}</td>"
        f"<td>{1e3 * p['time_s']:.0f}</td><td>{factor * p['amplitude']:.3g}</td></tr>"
        for i, p in enumerate(peaks, 1))
    report = (
        '<div id="unfolded-sbl"><h3>Peak sources (MNI-like fsaverage coordinates, mm; '
        'approximate lobes)</h3><table><tr><th>#</th><th>hemisphere</th><th>region</th>'
        f'<th>x</th><th>y</th><th>z</th><th>time (ms)</th><th>amplitude '
        f'({html_escape.escape(display)})</th></tr>{rows}</table><h3>Time courses</h3>'
        f'<img alt="time courses of the peak sources" src="data:image/png;base64,{png}"/>'
        '</div>')
    head, tail = page.rsplit("</body>", 1)
    with open(fname, "w", encoding="utf-8") as fid:
        fid.write(head + report + "</body>" + tail)
    return str(fname)


def empty_figure(message, title="", fname=None, dpi=100):
    """A figure that says why there is no map (an empty estimate): the message in
    place of the cortex, so that no colour bar scaled to round-off suggests sources.

    Returns
    -------
    fig : matplotlib.figure.Figure
    """
    import textwrap

    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    fig = plt.figure(figsize=(8, 3))
    fig.text(0.5, 0.82, title, ha="center", fontsize=12)
    fig.text(0.5, 0.45, textwrap.fill(message, 80), ha="center", va="center", fontsize=10)
    if fname is not None:
        fig.savefig(fname, dpi=dpi)
        plt.close(fig)
    return fig
