"""Forward models: the lead field and the source-space geometry it lives on.

:class:`ForwardModel` is a light container (numpy and scipy only).  Template
models for fsaverage ship as compressed package data and load with
:func:`load_forward`; :meth:`ForwardModel.from_mne` adapts any ``mne.Forward``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import scipy.sparse as sp

from ._validation import check_finite_array

_TEMPLATE_DIR = Path(__file__).parent / "data" / "forward"
DEFAULT_FORWARD = "biosemi64-ico3"
#: Neighbourhoods of the graph correction (``correction="graph"``): a Gaussian
#: kernel of width ``GRAPH_SIGMA`` over shortest-path distances along the
#: cortical mesh, truncated at ``GRAPH_RADIUS`` (metres).  Defined in
#: millimetres, not in mesh hops, so that the same weights see the same patch
#: of cortex at ico3 (about 10 mm spacing) and ico4 (about 6 mm).
GRAPH_SIGMA = 0.008
GRAPH_RADIUS = 0.016


class ForwardModel:
    """EEG lead field with source positions, adjacency and channel names.

    Parameters
    ----------
    lead_field : array-like, shape (n_channels, n_sources)
        Gain matrix (V / (A m)) for fixed-orientation dipoles.
    positions : array-like, shape (n_sources, 3)
        Source positions in metres.
    ch_names : list of str | None
        Channel names; default ``EEG000, EEG001, ...``.
    adjacency : sparse matrix or array, shape (n_sources, n_sources) | None
        Source-space neighbourhood (mesh edges).  ``None`` builds a symmetric
        6-nearest-neighbour graph from ``positions``.
    normals : array-like, shape (n_sources, 3) | None
        Dipole orientations.
    ch_pos : array-like, shape (n_channels, 3) | None
        Electrode positions (metres, head coordinates).
    vertices : list of array | None
        Surface vertex numbers per hemisphere (for ``mne.SourceEstimate``).
    subject : str
        Subject of the source space (``"fsaverage"`` for templates).
    name : str | None
        Template name, if any.
    cap, spacing : str | None
        The electrode cap (e.g. ``"biosemi64"``) and source spacing (e.g.
        ``"ico3"``) of a template or built forward model; None for others.
    variant : {"nominal", "perturbed"} | None
        ``"perturbed"``: the validation variant of a template (other skull
        conductivity, jittered electrodes).
    average_reference : bool
        Re-reference the lead field to the channel average (default).  Data are
        re-referenced the same way by the solvers, so both stay consistent.
    n_orient : {1, 3}
        Dipoles per location: 1 (fixed orientation, default) or 3 (free
        orientation: the columns come in consecutive groups of three, the x, y
        and z dipoles of one location, as in MNE's free-orientation forward
        models; ``positions`` and ``normals`` have one row per column).
        ``ClassicalCB`` gives each group one variance.
    """

    def __init__(self, lead_field, positions, ch_names=None, adjacency=None, *,
                 normals=None, ch_pos=None, vertices=None, subject="fsaverage",
                 name=None, average_reference=True, cap=None, spacing=None, variant=None,
                 n_orient=1):
        lead_field = check_finite_array(lead_field, "lead_field", ndim=2,
                                        shape_doc="(n_channels, n_sources)")
        n_channels, n_sources = lead_field.shape
        if n_channels < 2 or n_sources < 1:
            raise ValueError(f"lead_field must have shape (n_channels >= 2, n_sources >= 1), "
                             f"got {lead_field.shape}")
        if not np.any(lead_field):
            raise ValueError("lead_field is all zeros")
        positions = check_finite_array(positions, "positions", ndim=2,
                                       shape_doc="(n_sources, 3)")
        if positions.shape != (n_sources, 3):
            raise ValueError(f"positions must have shape (n_sources, 3) = ({n_sources}, 3), "
                             f"got {positions.shape}")
        if ch_names is None:
            ch_names = [f"EEG{i:03d}" for i in range(n_channels)]
        ch_names = [str(c) for c in ch_names]
        if len(ch_names) != n_channels:
            raise ValueError(f"ch_names has {len(ch_names)} names for {n_channels} channels")
        if len(set(ch_names)) != n_channels:
            raise ValueError("ch_names must be unique")
        if average_reference:
            lead_field = lead_field - lead_field.mean(axis=0, keepdims=True)
        self.average_reference = bool(average_reference)
        self.lead_field = lead_field
        self.positions = positions
        self.ch_names = ch_names
        self.adjacency = (_knn_adjacency(positions) if adjacency is None
                          else _check_adjacency(adjacency, n_sources))
        self.normals = None if normals is None else np.asarray(normals, float)
        self.ch_pos = None if ch_pos is None else np.asarray(ch_pos, float)
        self.vertices = None if vertices is None else [np.asarray(v, int) for v in vertices]
        self.subject = subject
        self.name = name
        if variant not in (None, "nominal", "perturbed"):
            raise ValueError(f"variant must be 'nominal', 'perturbed' or None, got {variant!r}")
        self.cap, self.spacing, self.variant = cap, spacing, variant
        if n_orient not in (1, 3) or n_sources % n_orient:
            raise ValueError(f"n_orient must be 1 or 3 and divide the lead field's "
                             f"{n_sources} columns, got {n_orient!r}")
        self.n_orient = int(n_orient)

    @property
    def n_channels(self):
        return self.lead_field.shape[0]

    @property
    def n_sources(self):
        return self.lead_field.shape[1]

    def pick_channels(self, ch_names):
        """A forward model of ``ch_names`` only, in that order (matched case-insensitively),
        as for a recording whose bad channels were dropped.

        The rows are average-referenced again, over the kept channels, as the
        recording would be.  The result keeps this model's ``name`` only when it has
        all its channels in the same order; otherwise it is named
        ``"NAME (k of n channels)"``, so that nothing looks it up as the full template
        (a fine-tuned model's validation data, its saved ``forward_name``).

        Parameters
        ----------
        ch_names : sequence of str
            Channels to keep.

        Returns
        -------
        forward : ForwardModel
        """
        ch_names = [str(c) for c in ch_names]
        index = {name.lower(): i for i, name in enumerate(self.ch_names)}
        missing = [c for c in ch_names if c.lower() not in index]
        if missing:
            raise ValueError(f"ch_names: channels not in the forward model: {missing}")
        rows = [index[c.lower()] for c in ch_names]
        if len(set(rows)) != len(rows):
            raise ValueError(f"ch_names has duplicates: {ch_names}")
        name = self.name
        if name and rows != list(range(self.n_channels)):
            name = f"{name} ({len(rows)} of {self.n_channels} channels)"
        return ForwardModel(self.lead_field[rows], self.positions,
                            [self.ch_names[r] for r in rows], self.adjacency,
                            normals=self.normals,
                            ch_pos=None if self.ch_pos is None else self.ch_pos[rows],
                            vertices=self.vertices, subject=self.subject, name=name,
                            average_reference=self.average_reference, cap=self.cap,
                            spacing=self.spacing, variant=self.variant,
                            n_orient=self.n_orient)

    def locations(self):
        """One column per location: this model itself with fixed orientation, else
        the dipoles normal to the cortex (the last of each group) with the
        locations' positions and adjacency: the geometry of a source estimate that
        gives one value per location (``apply``'s ``pick_ori`` None or "normal")."""
        k = self.n_orient
        if k == 1:
            return self
        return ForwardModel(self.lead_field[:, k - 1::k], self.positions[::k], self.ch_names,
                            self.adjacency.tocsr()[::k, ::k],
                            normals=None if self.normals is None else self.normals[k - 1::k],
                            ch_pos=self.ch_pos, vertices=self.vertices, subject=self.subject,
                            name=self.name, average_reference=False, cap=self.cap,
                            spacing=self.spacing, variant=self.variant)

    def __repr__(self):
        label = f" {self.name!r}" if self.name else ""
        return (f"<ForwardModel{label} | {self.n_channels} channels x "
                f"{self.n_sources} sources>")

    @classmethod
    def from_mne(cls, forward, name=None, orientation="fixed", picks=("eeg",), **fields):
        """Adapt an ``mne.Forward`` (its EEG channels by default).

        Parameters
        ----------
        forward : mne.Forward
        name : str | None
        orientation : {"fixed", "free"}
            ``"fixed"`` (default): dipoles normal to the cortex (the forward is
            converted to fixed orientation if needed); ``"free"``: three dipoles
            per location in surface coordinates (the last one normal), whose
            variance ``ClassicalCB`` shares (``n_orient=3``).
        picks : sequence of {"eeg", "mag", "grad"}
            Channel types to keep (MEG gains are in T/(A m) and T/(m A m): solve
            them whitened, as ``apply`` does with a noise covariance).
        **fields
            Further :class:`ForwardModel` parameters.
        """
        import mne

        if not isinstance(forward, mne.Forward):
            raise TypeError(f"forward must be an mne.Forward, got {type(forward).__name__}")
        if orientation not in ("fixed", "free"):
            raise ValueError(f"orientation must be 'fixed' or 'free', got {orientation!r}")
        meg = {"mag", "grad"} & set(picks)
        forward = mne.pick_types_forward(
            forward, meg=(True if len(meg) == 2 else meg.pop() if meg else False),
            eeg="eeg" in picks)
        if orientation == "free":
            if mne.forward.is_fixed_orient(forward):
                raise ValueError("orientation='free' needs a free-orientation forward "
                                 "(this one was made or converted to fixed orientation)")
            forward = mne.convert_forward_solution(forward, surf_ori=True, force_fixed=False,
                                                   use_cps=True, verbose=False)
            fields["n_orient"] = 3
        elif not forward["surf_ori"] or forward["source_ori"] != 1:
            forward = mne.convert_forward_solution(forward, surf_ori=True, force_fixed=True,
                                                   use_cps=True, verbose=False)
        src = forward["src"]
        vertices = [s["vertno"] for s in src]
        try:
            adjacency = mne.spatial_src_adjacency(src, verbose=False)
        except Exception:  # volume or discrete source spaces without a mesh
            adjacency = None
        ch_pos = np.array([ch["loc"][:3] for ch in forward["info"]["chs"]])
        n_orient = fields.get("n_orient", 1)
        if n_orient > 1 and adjacency is not None:  # the three dipoles of a location too
            adjacency = sp.kron(adjacency + sp.eye(adjacency.shape[0]),
                                np.ones((n_orient, n_orient))) - sp.eye(
                                    n_orient * adjacency.shape[0])
        return cls(forward["sol"]["data"], np.repeat(forward["source_rr"], n_orient, axis=0),
                   forward["info"]["ch_names"], adjacency, normals=forward["source_nn"],
                   ch_pos=ch_pos, vertices=vertices, subject=src._subject or "unknown",
                   name=name, **fields)

    def save(self, fname):
        """Write to a compressed ``.npz`` (lead field in float32)."""
        adj = sp.triu(self.adjacency, k=1).tocoo()
        arrays = dict(lead_field=self.lead_field.astype(np.float32),
                      positions=self.positions.astype(np.float32),
                      ch_names=np.array(self.ch_names),
                      edges=np.stack([adj.row, adj.col]).astype(np.int32),
                      subject=np.array(self.subject), name=np.array(self.name or ""),
                      average_reference=np.array(self.average_reference),
                      n_orient=np.array(self.n_orient),
                      **{k: np.array(getattr(self, k)) for k in ("cap", "spacing", "variant")
                         if getattr(self, k) is not None})
        if self.normals is not None:
            arrays["normals"] = self.normals.astype(np.float32)
        if self.ch_pos is not None:
            arrays["ch_pos"] = self.ch_pos.astype(np.float32)
        if self.vertices is not None:
            arrays["n_vertices"] = np.array([len(v) for v in self.vertices])
            arrays["vertices"] = np.concatenate(self.vertices).astype(np.int32)
        np.savez_compressed(fname, **arrays)

    @classmethod
    def load(cls, fname):
        """Read a file written by :meth:`save`."""
        try:
            with np.load(fname, allow_pickle=False) as data:
                arrays = {k: data[k] for k in data.files}
        except (OSError, ValueError, EOFError) as err:
            raise ValueError(f"cannot read forward model file {fname}: {err}") from err
        missing = {"lead_field", "positions", "ch_names", "edges"} - set(arrays)
        if missing:
            raise ValueError(f"forward model file {fname} lacks {sorted(missing)}")
        n_sources = arrays["lead_field"].shape[1]
        edges = arrays["edges"]
        adjacency = sp.coo_matrix((np.ones(edges.shape[1]), (edges[0], edges[1])),
                                  shape=(n_sources, n_sources))
        vertices = None
        if "vertices" in arrays:
            vertices = np.split(arrays["vertices"], np.cumsum(arrays["n_vertices"])[:-1])
        return cls(arrays["lead_field"].astype(np.float64),
                   arrays["positions"].astype(np.float64),
                   arrays["ch_names"].tolist(), adjacency + adjacency.T,
                   normals=arrays.get("normals"), ch_pos=arrays.get("ch_pos"),
                   vertices=vertices, subject=str(arrays.get("subject", "fsaverage")),
                   name=str(arrays.get("name", "")) or None,
                   # re-referencing removes the float32 rounding of the stored sums
                   average_reference=bool(arrays.get("average_reference", True)),
                   n_orient=int(arrays.get("n_orient", 1)),
                   **{k: str(arrays[k]) for k in ("cap", "spacing", "variant")
                      if k in arrays})


def list_forwards():
    """Names of the template forward models shipped with the package."""
    return sorted(p.stem for p in _TEMPLATE_DIR.glob("*.npz"))


def template_catalogue():
    """The shipped templates' fields: name -> {"cap", "spacing", "variant"}
    (``data/forward/templates.json``, written by the template builder)."""
    import json

    with open(_TEMPLATE_DIR / "templates.json") as fid:
        return json.load(fid)


def find_template(cap, spacing, variant="nominal"):
    """Name of the shipped template with these fields, or None."""
    for name, fields in template_catalogue().items():
        if fields == {"cap": cap, "spacing": spacing, "variant": variant}:
            return name
    return None


def load_forward(name=DEFAULT_FORWARD):
    """Load a shipped template forward model.

    Parameters
    ----------
    name : str
        One of :func:`list_forwards`, e.g. ``"biosemi64-ico3"`` (default: fsaverage
        ico3, 1284 sources, BioSemi 64-channel cap), ``"things63-ico4"``, or a
        ``...-perturbed`` validation variant (other skull conductivity and
        jittered electrodes).
    """
    if not isinstance(name, str):
        raise TypeError(f"name must be a str, got {type(name).__name__}")
    fname = _TEMPLATE_DIR / f"{name}.npz"
    if not fname.exists():
        raise ValueError(f"unknown forward model {name!r}; available: {list_forwards()}")
    fwd = ForwardModel.load(fname)
    fields = template_catalogue().get(name, {})
    fwd.cap, fwd.spacing, fwd.variant = (fields.get(k) for k in ("cap", "spacing", "variant"))
    return fwd


def loose_model(forward, loose="auto"):
    """The forward model to solve with under MNE's orientation constraint ``loose``.

    As MNE's inverse solvers: a free-orientation model's two tangential dipoles
    get the prior variance ``loose`` relative to the normal one (their gain
    columns scaled by ``sqrt(loose)``; the location's three dipoles still share
    one variance), 0 keeps the normal dipoles only and 1 leaves the model free.

    Parameters
    ----------
    forward : ForwardModel
    loose : float in [0, 1] | "auto"
        ``"auto"``: 0 for a fixed-orientation model, 0.2 for a free one on a
        cortical surface (two hemispheres), 1 on a volume or discrete source
        space (no normals to loosen about).

    Returns
    -------
    model : ForwardModel
        To solve with.
    scale : ndarray, shape (model.n_sources,) | None
        Multiplies the solver's estimate back into dipole moments (None: 1).
    """
    surface = forward.vertices is not None and len(forward.vertices) == 2
    if isinstance(loose, str):
        if loose != "auto":
            raise ValueError(f"loose must be a number in [0, 1] or 'auto', got {loose!r}")
        loose = 0.0 if forward.n_orient == 1 else 0.2 if surface else 1.0
    elif not (isinstance(loose, (int, float, np.floating)) and 0 <= loose <= 1):
        raise ValueError(f"loose must be a number in [0, 1] or 'auto', got {loose!r}")
    if forward.n_orient == 1:
        if loose != 0:
            raise ValueError(f"loose={loose} needs a free-orientation forward model "
                             "(ForwardModel.from_mne(fwd, orientation='free')); this one "
                             "is fixed: use loose=0 or 'auto'")
        return forward, None
    if loose == 1:
        return forward, None
    if not surface:
        raise ValueError(f"loose={loose} needs a cortical surface source space (normals); "
                         "use loose=1 on a volume or discrete source space")
    if loose == 0:  # the normal dipoles, the last of each location's three
        return ForwardModel(forward.lead_field[:, 2::3], forward.positions[2::3],
                            forward.ch_names, forward.adjacency.tocsr()[2::3, 2::3],
                            normals=None if forward.normals is None else forward.normals[2::3],
                            ch_pos=forward.ch_pos, vertices=forward.vertices,
                            subject=forward.subject, name=forward.name,
                            average_reference=forward.average_reference), None
    scale = np.tile(np.sqrt([loose, loose, 1.0]), forward.n_sources // 3)
    return ForwardModel(forward.lead_field * scale, forward.positions, forward.ch_names,
                        forward.adjacency, normals=forward.normals, ch_pos=forward.ch_pos,
                        vertices=forward.vertices, subject=forward.subject,
                        name=forward.name, average_reference=forward.average_reference,
                        n_orient=3), scale


def as_forward(forward):
    """Turn a template name, a ForwardModel, an ``mne.Forward`` or a file (``-fwd.fif``
    or a saved ForwardModel ``.npz``) into a ForwardModel."""
    if forward is None:
        return load_forward()
    if isinstance(forward, ForwardModel):
        return forward
    if isinstance(forward, (str, Path)) and str(forward).endswith((".fif", ".fif.gz")):
        import mne

        fwd = mne.read_forward_solution(forward, verbose=False)
        return ForwardModel.from_mne(mne.convert_forward_solution(
            fwd, surf_ori=True, force_fixed=True, use_cps=True, verbose=False))
    if isinstance(forward, (str, Path)) and str(forward).endswith(".npz"):
        return ForwardModel.load(forward)
    if isinstance(forward, str):
        return load_forward(forward)
    if type(forward).__name__ == "Forward":
        return ForwardModel.from_mne(forward)
    raise TypeError("forward must be a template name (str), a file name, a ForwardModel "
                    f"or an mne.Forward, got {type(forward).__name__}")


def mesh_graph(forward):
    """Source-space graph with edges weighted by their length in metres (CSR, upper
    triangle of ``forward.adjacency``): shortest paths over it follow the cortex
    instead of jumping across a sulcus."""
    adj = sp.triu(forward.adjacency, k=1).tocoo()
    pos = forward.positions
    length = np.linalg.norm(pos[adj.row] - pos[adj.col], axis=1)
    return sp.csr_matrix((length, (adj.row, adj.col)), shape=adj.shape)


def _cached(forward, key, compute):
    """``compute()``, cached on the forward model (its geometry does not change)."""
    cache = forward.__dict__.setdefault("_geometry_cache", {})
    if key not in cache:
        cache[key] = compute()
    return cache[key]


def source_spacing(forward):
    """Median length (metres) of the source-space graph's edges: about 10 mm for
    fsaverage ico3, 5 mm for ico4."""
    def median_edge():
        lengths = mesh_graph(forward).data
        return float(np.median(lengths)) if lengths.size else 0.0

    return _cached(forward, "spacing", median_edge)


def mesh_neighbourhoods(forward, sigma=GRAPH_SIGMA, radius=GRAPH_RADIUS, chunk=512):
    """Kernel-weighted neighbourhoods of every source along the cortical mesh.

    Parameters
    ----------
    forward : ForwardModel
    sigma, radius : float
        Width and truncation of the Gaussian kernel, in metres.
    chunk : int
        Sources per shortest-path call (bounds the memory to chunk x n_sources).

    Returns
    -------
    index : ndarray of int64, shape (n_sources, n_neighbours)
        Neighbours of each source (itself included), padded with the source's
        own index.
    weight : ndarray of float64, shape (n_sources, n_neighbours)
        Kernel weights, summing to 1 over each row (0 on the padding).
    distance : ndarray of float64, shape (n_sources, n_neighbours)
        Mesh distances in metres (0 on the padding).
    """
    return _cached(forward, ("neighbourhoods", float(sigma), float(radius)),
                   lambda: _neighbourhoods(forward, sigma, radius, chunk))


def _neighbourhoods(forward, sigma, radius, chunk):
    from scipy.sparse.csgraph import dijkstra

    graph = mesh_graph(forward)
    n_sources = forward.n_sources
    rows = []  # (neighbour indices, their distances) per source
    for start in range(0, n_sources, chunk):
        dist = dijkstra(graph, directed=False, limit=radius,
                        indices=np.arange(start, min(start + chunk, n_sources)))
        for d in dist:
            near = np.flatnonzero(np.isfinite(d))
            rows.append((near, d[near]))
    width = max(len(r) for r, _ in rows)
    index = np.repeat(np.arange(n_sources)[:, None], width, axis=1)
    distance = np.zeros((n_sources, width))
    weight = np.zeros((n_sources, width))
    for m, (r, d) in enumerate(rows):
        index[m, :len(r)] = r
        distance[m, :len(r)] = d
        kernel = np.exp(-d ** 2 / (2 * sigma ** 2))
        weight[m, :len(r)] = kernel / kernel.sum()
    return index.astype(np.int64), weight, distance


def _check_adjacency(adjacency, n_sources):
    adjacency = sp.csr_matrix(adjacency, dtype=float)
    if adjacency.shape != (n_sources, n_sources):
        raise ValueError(f"adjacency must have shape (n_sources, n_sources) = "
                         f"({n_sources}, {n_sources}), got {adjacency.shape}")
    adjacency = ((adjacency + adjacency.T) != 0).astype(float)
    adjacency.setdiag(0)
    adjacency.eliminate_zeros()
    return adjacency.tocsr()


def _knn_adjacency(positions, k=6):
    from scipy.spatial import cKDTree

    k = min(k, len(positions) - 1)
    if k < 1:
        return sp.csr_matrix((len(positions), len(positions)))
    _, idx = cKDTree(positions).query(positions, k + 1)
    rows = np.repeat(np.arange(len(positions)), k)
    adjacency = sp.coo_matrix((np.ones(rows.size), (rows, idx[:, 1:].ravel())),
                              shape=(len(positions),) * 2)
    return _check_adjacency(adjacency, len(positions))
