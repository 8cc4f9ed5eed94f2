"""Offline builder of the template EEG forward models shipped with the package.

Everything here is built from files that installed wheels carry, so that no
download is needed:

* cortex: nilearn's fsaverage5 (ico5) white/pial/sphere meshes, written into a
  FreeSurfer-style subjects folder so that :func:`mne.setup_source_space` works;
* head: MNE's shipped fsaverage inner skull (ico5 topology) and scalp; the scalp
  is resampled onto the inner-skull topology by casting rays from the
  inner-skull centroid, and an outer skull is placed between the two;
* caps: MNE's built-in montages, electrodes projected radially onto the scalp.

The products are 3-layer BEM forward models with fixed orientation normal to the
cortex and an average reference.  ``build_templates`` writes them as compressed
``.npz`` files that :func:`unfolded_sbl.load_forward` reads in milliseconds.

This module imports MNE, nibabel and nilearn; the rest of the package only
needs the ``.npz`` files it writes.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import numpy as np

from .forward import _TEMPLATE_DIR, ForwardModel

#: Conductivities (S/m) of brain, skull and scalp used for the training models.
CONDUCTIVITY = (0.3, 0.006, 0.3)
#: Skull conductivity factor of the validation ("perturbed") models.  Changing
#: the skull mostly rescales the lead field, so the validation models also get
#: electrodes jittered by ``PERTURB_JITTER`` metres (seeded), which reshapes
#: topographies: together they mitigate the "inverse crime".
PERTURB_SKULL_FACTOR = 0.5
PERTURB_JITTER = 0.003

#: Channel list of the THINGS-EEG2 recordings (63-channel EasyCap, 10-10 names).
THINGS63 = (
    "Fp1 Fp2 AF7 AF3 AFz AF4 AF8 F7 F5 F3 F1 F2 F4 F6 F8 FT9 FT7 FC5 FC3 FC1 FCz "
    "FC2 FC4 FC6 FT8 FT10 T7 C5 C3 C1 Cz C2 C4 C6 T8 TP9 TP7 CP5 CP3 CP1 CPz CP2 "
    "CP4 CP6 TP8 TP10 P7 P5 P3 P1 Pz P2 P4 P6 P8 PO7 PO3 POz PO4 PO8 O1 Oz O2"
).split()

#: cap name -> (MNE built-in montage, channel subset or None for all)
CAPS = {
    "biosemi64": ("biosemi64", None),
    "things63": ("colin27_1005", THINGS63),
    "biosemi128": ("biosemi128", None),
}
SPACINGS = ("ico3", "ico4")


def default_cache_dir() -> Path:
    """Folder for the subjects directory and BEM solutions (``UNFOLDED_SBL_CACHE``)."""
    env = os.environ.get("UNFOLDED_SBL_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "unfolded_sbl"


def _mne_data_dir() -> Path:
    import mne

    return Path(mne.__file__).parent / "data" / "fsaverage"


def _nilearn_fsaverage5_dir() -> Path:
    import nilearn

    return Path(nilearn.__file__).parent / "datasets" / "data" / "fsaverage5"


def ray_mesh_distance(origin, directions, rr, tris):
    """Distance along each ray to its first crossing of a triangle mesh.

    Moller-Trumbore, vectorised over triangles and chunked over rays.

    Returns
    -------
    dist : ndarray, shape (n_rays,)
        Smallest positive distance, ``inf`` where a ray misses the mesh.
    """
    v0 = rr[tris[:, 0]]
    e1 = rr[tris[:, 1]] - v0
    e2 = rr[tris[:, 2]] - v0
    dist = np.full(len(directions), np.inf)
    for start in range(0, len(directions), 256):
        d = directions[start:start + 256][:, None, :]  # (r, 1, 3)
        p = np.cross(d, e2[None])  # (r, t, 3)
        det = np.einsum("tk,rtk->rt", e1, p)
        ok = np.abs(det) > 1e-12
        inv = np.where(ok, 1.0 / np.where(ok, det, 1.0), 0.0)
        s = origin - v0  # (t, 3)
        u = np.einsum("tk,rtk->rt", s, p) * inv
        q = np.cross(s, e1)  # (t, 3)
        v = np.einsum("rk,tk->rt", d[:, 0], q) * inv
        t = np.einsum("tk,tk->t", e2, q)[None] * inv
        hit = ok & (u >= 0) & (v >= 0) & (u + v <= 1) & (t > 0)
        dist[start:start + 256] = np.where(hit, t, np.inf).min(axis=1)
    return dist


def _mesh_neighbours(tris, n_vert):
    import scipy.sparse as sp

    i = np.concatenate([tris[:, 0], tris[:, 1], tris[:, 2]])
    j = np.concatenate([tris[:, 1], tris[:, 2], tris[:, 0]])
    adj = sp.coo_matrix((np.ones(len(i)), (i, j)), shape=(n_vert, n_vert)).tocsr()
    adj = ((adj + adj.T) > 0).astype(float)
    deg = np.asarray(adj.sum(1)).ravel()
    return adj, deg


def make_head_surfaces(thickness=0.006, min_gap=0.0015, n_smooth=10):
    """Inner skull, outer skull and scalp (metres) on the ico5 inner-skull topology.

    The scalp is where rays from the inner-skull centroid through each
    inner-skull vertex first cross MNE's fsaverage head surface.  The outer
    skull lies ``min(thickness, gap / 2)`` outside the inner skull along the same
    ray, smoothed on the mesh and kept at least ``min_gap`` from both
    neighbours, so the three surfaces are nested and do not intersect.

    Returns
    -------
    surfaces : dict
        ``{"inner_skull", "outer_skull", "outer_skin"}`` -> (n_vert, 3) arrays,
        plus ``"tris"`` (n_tri, 3) and ``"centre"`` (3,).
    """
    import mne

    inner = mne.read_bem_surfaces(_mne_data_dir() / "fsaverage-inner_skull-bem.fif",
                                  verbose=False)[0]
    head = mne.read_bem_surfaces(_mne_data_dir() / "fsaverage-head.fif", verbose=False)[0]
    rr_in, tris = inner["rr"].astype(float), inner["tris"]
    centre = rr_in.mean(axis=0)
    radius_in = np.linalg.norm(rr_in - centre, axis=1)
    directions = (rr_in - centre) / radius_in[:, None]
    radius_skin = ray_mesh_distance(centre, directions, head["rr"], head["tris"])
    adj, deg = _mesh_neighbours(tris, len(rr_in))
    missed = ~np.isfinite(radius_skin) | (radius_skin < radius_in + 2 * min_gap)
    # Rays that miss the (open) head surface or graze it: borrow from neighbours.
    radius_skin[missed] = np.nan
    for _ in range(200):
        if not np.isnan(radius_skin).any():
            break
        filled = np.nan_to_num(radius_skin)
        count = adj @ (~np.isnan(radius_skin)).astype(float)
        mean = (adj @ filled) / np.maximum(count, 1)
        fill = np.isnan(radius_skin) & (count > 0)
        radius_skin[fill] = mean[fill]
    radius_skin = np.maximum(radius_skin, radius_in + 2 * min_gap + 0.002)
    gap = radius_skin - radius_in
    skull = np.minimum(thickness, gap / 2)
    for _ in range(n_smooth):
        skull = 0.5 * skull + 0.5 * (adj @ skull) / deg
    skull = np.clip(skull, min_gap, gap - min_gap)
    return {
        "inner_skull": rr_in,
        "outer_skull": centre + directions * (radius_in + skull)[:, None],
        "outer_skin": centre + directions * radius_skin[:, None],
        "tris": tris,
        "centre": centre,
    }


def make_subjects_dir(subjects_dir=None, overwrite=False):
    """Write an offline FreeSurfer-style ``fsaverage`` folder; return ``subjects_dir``."""
    import mne
    import nibabel as nib

    subjects_dir = Path(subjects_dir or default_cache_dir() / "subjects")
    subj = subjects_dir / "fsaverage"
    done = subj / "bem" / "outer_skin.surf"
    if done.exists() and not overwrite:
        return subjects_dir
    (subj / "surf").mkdir(parents=True, exist_ok=True)
    (subj / "bem").mkdir(parents=True, exist_ok=True)
    src_dir = _nilearn_fsaverage5_dir()
    for surf in ("white", "pial", "sphere"):
        for hemi, side in (("lh", "left"), ("rh", "right")):
            gii = nib.load(src_dir / f"{surf}_{side}.gii.gz")
            coords = gii.darrays[0].data.astype(float)
            faces = gii.darrays[1].data.astype(np.int32)
            nib.freesurfer.write_geometry(str(subj / "surf" / f"{hemi}.{surf}"), coords, faces)
    surfaces = make_head_surfaces()
    for name in ("inner_skull", "outer_skull", "outer_skin"):
        mne.write_surface(str(subj / "bem" / f"{name}.surf"), surfaces[name] * 1e3,
                          surfaces["tris"], overwrite=True)
    return subjects_dir


def make_bem_solution(subjects_dir, conductivity=CONDUCTIVITY, ico=4, verbose=False):
    """3-layer BEM solution, cached on disk by conductivity and resolution."""
    import mne

    tag = "-".join(f"{c:g}" for c in conductivity)
    fname = Path(subjects_dir) / "fsaverage" / "bem" / f"fsaverage-ico{ico}-{tag}-bem-sol.fif"
    if fname.exists():
        return mne.read_bem_solution(fname, verbose=verbose)
    model = mne.make_bem_model("fsaverage", ico=ico, conductivity=conductivity,
                               subjects_dir=subjects_dir, verbose=verbose)
    solution = mne.make_bem_solution(model, verbose=verbose)
    mne.write_bem_solution(fname, solution, overwrite=True, verbose=verbose)
    return solution


def make_source_space(subjects_dir, spacing="ico3"):
    """Cortical surface source space on the white matter surface."""
    import mne

    return mne.setup_source_space("fsaverage", spacing=spacing, subjects_dir=subjects_dir,
                                  add_dist=False, verbose=False)


def make_cap_info(cap, jitter=0.0, random_state=None):
    """``mne.Info`` of a template cap, electrodes on the template scalp.

    Parameters
    ----------
    cap : str | sequence of str | mne.channels.DigMontage
        A key of :data:`CAPS`, the name of any MNE built-in montage, a list of
        10-05 channel names (see :func:`standard_montage_for`) or a head-frame
        montage.
    jitter : float
        Standard deviation (metres) of a random displacement of each electrode
        before it is projected onto the scalp (used for validation models).
    """
    import mne

    if isinstance(cap, str):
        montage_name, subset = CAPS.get(cap, (cap, None))
        montage = mne.channels.make_standard_montage(montage_name)
        ch_names = list(subset) if subset is not None else list(montage.ch_names)
        info = mne.create_info(ch_names, 100.0, "eeg")
        info.set_montage(montage, on_missing="raise", verbose=False)
    else:
        montage = cap if isinstance(cap, mne.channels.DigMontage) else (
            standard_montage_for(list(cap)))
        ch_names = list(montage.ch_names)
        info = mne.create_info(ch_names, 100.0, "eeg")
        info.set_montage(montage, verbose=False)
    trans = mne.read_trans(_mne_data_dir() / "fsaverage-trans.fif")
    head_pos = np.array([ch["loc"][:3] for ch in info["chs"]])
    mri_pos = mne.transforms.apply_trans(trans, head_pos)
    if jitter:
        rng = np.random.default_rng(random_state)
        mri_pos = mri_pos + rng.normal(scale=jitter, size=mri_pos.shape)
    surfaces = make_head_surfaces()
    centre = surfaces["centre"]
    direction = mri_pos - centre
    direction /= np.linalg.norm(direction, axis=1, keepdims=True)
    dist = ray_mesh_distance(centre, direction, surfaces["outer_skin"], surfaces["tris"])
    if not np.all(np.isfinite(dist)):
        raise RuntimeError(f"could not project all electrodes of {cap!r} onto the scalp")
    projected = mne.transforms.apply_trans(mne.transforms.invert_transform(trans),
                                           centre + direction * dist[:, None])
    montage_fit = mne.channels.make_dig_montage(
        ch_pos=dict(zip(ch_names, projected)), coord_frame="head",
        **_head_fiducials(trans))
    info.set_montage(montage_fit, verbose=False)
    return info


def standard_montage_for(ch_names, positions=None):
    """A DigMontage of ``ch_names`` in the head frame of MNE's standard montages.

    Channels in ``positions`` (name -> head-frame position in metres, e.g. from
    a recording's standard montage such as ``GSN-HydroCel-129``) keep them;
    the others take their 10-05 position, matched case-insensitively (``FPz``
    finds ``Fpz``).  Raises a ValueError listing channels that have neither.
    """
    import mne

    standard = mne.channels.make_standard_montage("colin27_1005")
    fiducials = standard.get_positions()
    by_lower = {name.lower(): pos for name, pos in fiducials["ch_pos"].items()}
    positions = {} if positions is None else dict(positions)
    missing = [c for c in ch_names if c not in positions and c.lower() not in by_lower]
    if missing:
        raise ValueError(f"channels without a position: {missing}; they are not 10-05 "
                         "names and the recording has no montage for them. Set one "
                         "(inst.set_montage(...), or --montage on the command line), mark "
                         "them bad, or pass a forward model that has them")
    ch_pos = {c: np.asarray(positions[c], float) if c in positions else by_lower[c.lower()]
              for c in ch_names}
    return mne.channels.make_dig_montage(
        ch_pos=ch_pos, nasion=fiducials["nasion"], lpa=fiducials["lpa"],
        rpa=fiducials["rpa"], coord_frame="head")


def forward_for_montage(ch_names, positions=None, spacing="ico3", bem_ico=4, cache_dir=None,
                        subjects_dir=None, log=print):
    """Template forward model (fsaverage, 3-layer BEM) for exactly ``ch_names``.

    Built offline from standard 10-05 positions on the first call (about 20 s
    with a cached BEM solution, a few minutes when the BEM must be solved too)
    and loaded from ``cache_dir`` afterwards.

    Parameters
    ----------
    ch_names : sequence of str
        Channel names.
    positions : dict of str -> array (3,) | None
        Head-frame positions (m) of channels that are not 10-05 names (or that
        should not use their standard position); see :func:`standard_montage_for`.
    spacing : {"ico3", "ico4"}
    bem_ico : int
        BEM surface resolution (4 as the shipped templates).
    cache_dir : str | Path | None
        Folder of the cached models (default: :func:`default_cache_dir`).
    subjects_dir : str | Path | None
        Template subjects folder with the cached BEM solutions (default: in
        :func:`default_cache_dir`).
    log : callable | None
        Progress messages.

    Returns
    -------
    forward : ForwardModel
    """
    import hashlib

    ch_names = list(ch_names)
    if len(set(c.lower() for c in ch_names)) != len(ch_names):
        raise ValueError(f"ch_names has duplicates: {ch_names}")
    montage = standard_montage_for(ch_names, positions)  # fails before any build
    cache_dir = Path(cache_dir or default_cache_dir())
    ch_pos = np.round(np.array(list(montage.get_positions()["ch_pos"].values())), 5)
    key = hashlib.sha1(f"{ch_names}|{ch_pos.tolist()}|{spacing}|{bem_ico}|{CONDUCTIVITY}"
                       .encode()).hexdigest()
    name = f"custom{len(ch_names)}-{spacing}-{key[:10]}"
    path = cache_dir / "forward" / f"{name}.npz"
    if path.exists():
        return ForwardModel.load(path)
    log = log or (lambda *_: None)
    start = time.perf_counter()
    log(f"building a template forward model for {len(ch_names)} channels ({spacing}); "
        f"cached at {path}")
    subjects_dir = make_subjects_dir(subjects_dir)
    bem_cached = any((subjects_dir / "fsaverage" / "bem").glob(f"fsaverage-ico{bem_ico}-*"))
    if not bem_cached:
        log("  solving the 3-layer BEM first (a few minutes, once)")
    fwd = ForwardModel.from_mne(make_template_forward(montage, spacing, bem_ico=bem_ico,
                                                      subjects_dir=subjects_dir),
                                name=name, cap=f"custom{len(ch_names)}", spacing=spacing,
                                variant="nominal")
    path.parent.mkdir(parents=True, exist_ok=True)
    fwd.save(path)
    log(f"  done in {time.perf_counter() - start:.0f} s")
    return fwd


def _head_fiducials(trans):
    """fsaverage fiducials in head coordinates (they round-trip exactly)."""
    import mne

    fids, _ = mne.io.read_fiducials(_mne_data_dir() / "fsaverage-fiducials.fif")
    inv = mne.transforms.invert_transform(trans)
    names = {1: "lpa", 2: "nasion", 3: "rpa"}
    return {names[f["ident"]]: mne.transforms.apply_trans(inv, f["r"]) for f in fids}


def make_template_forward(cap="biosemi64", spacing="ico3", perturbed=False, bem_ico=4,
                          subjects_dir=None, random_state=0):
    """Build one template forward model (an ``mne.Forward``, fixed orientation).

    ``perturbed=True`` builds the validation variant: skull conductivity times
    :data:`PERTURB_SKULL_FACTOR` and electrodes jittered by
    :data:`PERTURB_JITTER` metres (seeded by ``random_state``).
    """
    import mne
    from threadpoolctl import threadpool_limits

    subjects_dir = make_subjects_dir(subjects_dir)
    conductivity = CONDUCTIVITY
    jitter = 0.0
    if perturbed:
        conductivity = (CONDUCTIVITY[0], CONDUCTIVITY[1] * PERTURB_SKULL_FACTOR, CONDUCTIVITY[2])
        jitter = PERTURB_JITTER
    bem = make_bem_solution(subjects_dir, conductivity, ico=bem_ico)
    src = make_source_space(subjects_dir, spacing)
    info = make_cap_info(cap, jitter=jitter, random_state=random_state)
    trans = mne.read_trans(_mne_data_dir() / "fsaverage-trans.fif")
    # scipy's Delaunay point location does thousands of tiny LAPACK calls:
    # multi-threaded BLAS makes them much slower on a busy machine.
    with threadpool_limits(1):
        fwd = mne.make_forward_solution(info, trans=trans, src=src, bem=bem, eeg=True,
                                        meg=False, verbose=False)
    return mne.convert_forward_solution(fwd, surf_ori=True, force_fixed=True,
                                        use_cps=True, verbose=False)


def template_name(cap, spacing, perturbed=False):
    """File name of a shipped template."""
    return f"{cap}-{spacing}" + ("-perturbed" if perturbed else "")


def relative_difference(a, b):
    """Relative lead-field difference, also after removing one global gain."""
    a, b = np.asarray(a, float), np.asarray(b, float)
    raw = np.linalg.norm(a - b) / np.linalg.norm(a)
    gain = np.sum(a * b) / np.sum(b * b)
    gain_free = np.linalg.norm(a - gain * b) / np.linalg.norm(a)
    an = a / np.linalg.norm(a, axis=0)
    bn = b / np.linalg.norm(b, axis=0)
    corr = np.median(np.sum(an * bn, axis=0))
    return {"relative": float(raw), "relative_gain_free": float(gain_free),
            "median_column_correlation": float(corr)}


def build_templates(out_dir=None, caps=None, spacings=SPACINGS, bem_ico=4,
                    subjects_dir=None, log=print):
    """Build every template (nominal and perturbed) and write them as ``.npz``.

    Returns a report dict with build times and the lead-field differences caused
    by the perturbation; it is also written to ``build_report.json``.
    """
    out_dir = Path(out_dir or _TEMPLATE_DIR)
    out_dir.mkdir(parents=True, exist_ok=True)
    caps = list(caps or CAPS)
    report = {"conductivity": CONDUCTIVITY, "perturb_skull_factor": PERTURB_SKULL_FACTOR,
              "perturb_jitter_m": PERTURB_JITTER, "bem_ico": bem_ico, "timings_s": {},
              "perturbation": {}}
    t0 = time.perf_counter()
    subjects_dir = make_subjects_dir(subjects_dir)
    report["timings_s"]["subjects_dir"] = time.perf_counter() - t0
    for perturbed in (False, True):
        cond = CONDUCTIVITY if not perturbed else (
            CONDUCTIVITY[0], CONDUCTIVITY[1] * PERTURB_SKULL_FACTOR, CONDUCTIVITY[2])
        t0 = time.perf_counter()
        make_bem_solution(subjects_dir, cond, ico=bem_ico)
        report["timings_s"][f"bem_solution_{'perturbed' if perturbed else 'nominal'}"] = (
            time.perf_counter() - t0)
        log(f"BEM solution {cond}: {time.perf_counter() - t0:.1f} s")
    catalogue_path = out_dir / "templates.json"
    catalogue = json.loads(catalogue_path.read_text()) if catalogue_path.exists() else {}
    for cap in caps:
        for spacing in spacings:
            models = {}
            for perturbed in (False, True):
                name = template_name(cap, spacing, perturbed)
                t0 = time.perf_counter()
                variant = "perturbed" if perturbed else "nominal"
                fwd = ForwardModel.from_mne(make_template_forward(
                    cap, spacing, perturbed, bem_ico=bem_ico, subjects_dir=subjects_dir),
                    name=name, cap=cap, spacing=spacing, variant=variant)
                fwd.save(out_dir / f"{name}.npz")
                catalogue[name] = {"cap": cap, "spacing": spacing, "variant": variant}
                report["timings_s"][name] = time.perf_counter() - t0
                log(f"{name}: {fwd.n_channels} x {fwd.n_sources} in "
                    f"{time.perf_counter() - t0:.1f} s")
                models[perturbed] = fwd
            diff = relative_difference(models[False].lead_field, models[True].lead_field)
            report["perturbation"][template_name(cap, spacing)] = diff
            log(f"  perturbation: {diff}")
    with open(out_dir / "build_report.json", "w") as fid:
        json.dump(report, fid, indent=2)
    catalogue_path.write_text(json.dumps(dict(sorted(catalogue.items())), indent=2) + "\n")
    return report


# -- forward models for a recording's own sensors (MEG, MEG+EEG) ---------------------
#: Conductivity (S/m) of the single-layer BEM of MEG-only forward models: inside the
#: inner skull the magnetic field hardly depends on the outer layers.
MEG_CONDUCTIVITY = (0.3,)


def _coregistration_files(subjects_dir):
    """fsaverage's head surface and fiducials (shipped by MNE) where
    ``mne.coreg.Coregistration`` looks for them."""
    import shutil

    bem_dir = Path(subjects_dir) / "fsaverage" / "bem"
    for name in ("fsaverage-head.fif", "fsaverage-fiducials.fif"):
        if not (bem_dir / name).exists():
            shutil.copy(_mne_data_dir() / name, bem_dir / name)


def coregister_fsaverage(info, subjects_dir=None, log=print):
    """Head-to-MRI transform placing fsaverage under a recording's head frame.

    With the recording's digitised fiducials (nasion, LPA, RPA), fsaverage's
    fiducials are fitted to them and the fit is refined by ICP on the
    digitised head shape (points over 5 mm off the scalp are left out), as MNE's
    co-registration does; fsaverage is not scaled.  Without fiducials the head
    frame is assumed to be fsaverage's own, which can be centimetres off: that
    is logged.

    Returns
    -------
    trans : mne.transforms.Transform
        ``head`` to ``mri``.
    description : str
        How it was found (and the mean digitisation-to-scalp distance).
    """
    import mne

    subjects_dir = make_subjects_dir(subjects_dir)
    dig = info.get("dig") or []
    cardinal = {d["ident"] for d in dig if d["kind"] == mne.io.constants.FIFF.FIFFV_POINT_CARDINAL
                and d["coord_frame"] == mne.io.constants.FIFF.FIFFV_COORD_HEAD}
    if not {1, 2, 3} <= cardinal:
        if log is not None:
            log("the recording has no digitised fiducials (nasion, LPA, RPA): fsaverage is "
                "placed as if the head frame were its own, which can be centimetres off. "
                "Digitise the head or pass forward= an mne.Forward of the subject")
        return (mne.read_trans(_mne_data_dir() / "fsaverage-trans.fif"),
                "fsaverage's own head frame (no digitised fiducials)")
    _coregistration_files(subjects_dir)
    with mne.use_log_level("warning"):
        coreg = mne.coreg.Coregistration(info, "fsaverage", subjects_dir, fiducials="auto")
    coreg.fit_fiducials(verbose=False)
    n_shape = sum(d["kind"] in (mne.io.constants.FIFF.FIFFV_POINT_EXTRA,
                                mne.io.constants.FIFF.FIFFV_POINT_EEG) for d in dig)
    how = "fsaverage's fiducials fitted to the digitised ones"
    if n_shape >= 10:
        coreg.fit_icp(n_iterations=20, nasion_weight=2.0, verbose=False)
        with mne.use_log_level("warning"):
            coreg.omit_head_shape_points(distance=0.005)
        coreg.fit_icp(n_iterations=20, nasion_weight=10.0, verbose=False)
        how += f", refined by ICP on {n_shape} head-shape points"
    distance = 1e3 * float(np.mean(coreg.compute_dig_mri_distances()))
    return coreg.trans, f"{how} (mean distance to the scalp {distance:.1f} mm)"


def _recording_key(info, ch_names, spacing, conductivity, bem_ico):
    """Hash of what a recording's forward model depends on: its sensors (names,
    positions and orientations), its device-to-head transform and its digitisation."""
    import hashlib

    chs = [info["chs"][info["ch_names"].index(c)] for c in ch_names]
    parts = [ch_names, [np.round(ch["loc"], 6).tolist() for ch in chs],
             [int(ch["coil_type"]) for ch in chs],
             None if info["dev_head_t"] is None else np.round(
                 info["dev_head_t"]["trans"], 6).tolist(),
             [(int(d["kind"]), np.round(d["r"], 5).tolist()) for d in info.get("dig") or []],
             spacing, list(conductivity), bem_ico]
    return hashlib.sha1(repr(parts).encode()).hexdigest()[:10]


def forward_for_recording(info, picks=("grad", "mag"), spacing="ico3", bem_ico=4,
                          cache_dir=None, subjects_dir=None, log=print):
    """Template forward model (fsaverage) for a recording's own sensors, offline.

    MEG sensors are placed by the recording's ``dev_head_t``, electrodes by their
    digitised positions, and fsaverage under the head by
    :func:`coregister_fsaverage`.  MEG alone uses a single-layer BEM (the inner
    skull); with EEG the 3-layer BEM of the EEG templates.  Built once (seconds
    with a cached BEM solution) and cached in ``cache_dir`` by sensors,
    transforms and digitisation, like :func:`forward_for_montage`.

    Parameters
    ----------
    info : mne.Info
        The recording's measurement info.
    picks : str | sequence of str
        Channel types to include (its good channels of these types), as
        :func:`unfolded_sbl.meg.parse_picks` reads them (``"meg"``, ``"meg,eeg"``,
        ``("grad", "mag")``).
    spacing : {"ico3", "ico4"} or another ``mne.setup_source_space`` spacing
    bem_ico : int
        BEM surface resolution.
    cache_dir, subjects_dir : str | Path | None
        As :func:`forward_for_montage`.
    log : callable | None
        Progress and co-registration messages.

    Returns
    -------
    forward : mne.Forward
        Free orientation in surface coordinates (``surf_ori``), on fsaverage's
        cortex; fix or loosen the orientation when solving.
    """
    import mne
    from threadpoolctl import threadpool_limits

    from .meg import parse_picks

    picks = parse_picks(picks)
    kinds = dict(zip(info["ch_names"], info.get_channel_types()))
    ch_names = [c for c in info["ch_names"] if kinds[c] in picks and c not in info["bads"]]
    if not ch_names:
        raise ValueError(f"the recording has no good {'/'.join(picks)} channels")
    meg = bool({"mag", "grad"} & set(picks))
    if meg and info["dev_head_t"] is None:
        raise ValueError("the recording's info has no dev_head_t (device-to-head transform): "
                         "the MEG sensors cannot be placed under the head")
    eeg = "eeg" in picks
    unplaced = [c for c in ch_names if kinds[c] == "eeg" and not np.any(
        info["chs"][info["ch_names"].index(c)]["loc"][:3])]
    if unplaced:
        raise ValueError(f"electrodes without a position: {unplaced[:5]}"
                         f"{'...' if len(unplaced) > 5 else ''}; set the digitised montage "
                         "(inst.set_montage) or pass forward=")
    conductivity = CONDUCTIVITY if eeg else MEG_CONDUCTIVITY
    cache_dir = Path(cache_dir or default_cache_dir())
    key = _recording_key(info, ch_names, spacing, conductivity, bem_ico)
    path = cache_dir / "forward" / f"recording{len(ch_names)}-{spacing}-{key}-fwd.fif"
    if path.exists():
        return _surface_oriented(mne.read_forward_solution(path, verbose=False))
    log = log or (lambda *_: None)
    start = time.perf_counter()
    log(f"building a forward model for the recording's {len(ch_names)} "
        f"{'/'.join(picks)} channels on fsaverage ({spacing}); cached at {path}")
    subjects_dir = make_subjects_dir(subjects_dir)
    trans, how = coregister_fsaverage(info, subjects_dir, log=log)
    log(f"  co-registration: {how}")
    bem = make_bem_solution(subjects_dir, conductivity, ico=bem_ico)
    src = make_source_space(subjects_dir, spacing)
    sensors = mne.pick_info(info, [info["ch_names"].index(c) for c in ch_names])
    with threadpool_limits(1):  # see make_template_forward
        fwd = mne.make_forward_solution(sensors, trans=trans, src=src, bem=bem, meg=meg,
                                        eeg=eeg, verbose=False)
    path.parent.mkdir(parents=True, exist_ok=True)
    mne.write_forward_solution(path, fwd, overwrite=True, verbose=False)
    log(f"  done in {time.perf_counter() - start:.0f} s")
    # read back: the tangential directions are then those of every later (cached) call
    return _surface_oriented(mne.read_forward_solution(path, verbose=False))


def _surface_oriented(fwd):
    import mne

    return mne.convert_forward_solution(fwd, surf_ori=True, use_cps=True, verbose=False)
