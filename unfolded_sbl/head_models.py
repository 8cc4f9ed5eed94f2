"""Head-model randomisation: an ensemble of forward models for training data.

A network always inverts with the nominal template, but recorded EEG comes from
heads that differ from it.  Training data simulated through an *ensemble* of
plausible heads teaches the learned corrections to absorb those errors.  Each
member of the ensemble is a 3-layer BEM forward model of the training cap on
fsaverage, built offline (``templates``) with, drawn independently
(:data:`ENSEMBLE_RANGES`):

* tissue conductivities: brain and scalp 0.25-0.45 S/m, skull 0.003-0.015 S/m;
* head size: scalp and outer skull scaled radially by 0.92-1.08 about the
  inner-skull centre (the brain stays the template's), electrodes re-projected;
* electrode positions: each electrode displaced by up to 10 mm (Gaussian, a
  per-member standard deviation of 0-5 mm, clipped at 10 mm), then projected
  onto the scalp;
* co-registration: the whole cap rotated by up to 5 degrees about a random
  axis through the head centre and translated by up to 5 mm;
* source orientation: members keep the free-orientation lead field, and each
  draw tilts every source's dipole away from the cortical normal by an angle
  up to 30 degrees (uniform) in a random direction.

Members use a BEM of ico3 surfaces (5 s to solve instead of 3 minutes at
ico4), itself a further modelling difference from the ico4 templates.  The
ensemble is training data, not package data: :func:`load_head_ensemble` builds
it on first use (about 6 s per member on one core, with a progress bar) and
caches it in ``~/.cache/unfolded_sbl/ensembles`` (``UNFOLDED_SBL_CACHE``);
16 members of the 64-channel ico3 cap take 16 MB.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ._validation import check_positive_int

#: Ranges of the randomised head-model parameters (SI units, degrees for angles).
ENSEMBLE_RANGES = {
    "brain_conductivity": (0.25, 0.45),
    "skull_conductivity": (0.003, 0.015),
    "scalp_conductivity": (0.25, 0.45),
    "head_scale": (0.92, 1.08),
    "electrode_jitter_sd": (0.0, 0.005),
    "electrode_jitter_max": 0.010,
    "coregistration_rotation_deg": 5.0,
    "coregistration_translation": 0.005,
    "orientation_tilt_deg": 30.0,
}


#: The ensemble the shipped models were trained with (``load_head_ensemble``).
ENSEMBLE_MEMBERS = 16
ENSEMBLE_SEED = 0
ENSEMBLE_BEM_ICO = 3


@dataclass
class HeadModelEnsemble:
    """Free-orientation lead fields of perturbed heads, in the nominal's source order.

    Attributes
    ----------
    lead_fields : ndarray, shape (n_members, n_channels, n_sources, 3)
        Average-referenced gains (V / (A m)) of dipoles along two tangential
        directions and the cortical normal (last), float32.
    params : list of dict
        The drawn parameters of each member.
    name : str
        ``CAP-SPACING`` of the nominal template.
    max_tilt_deg : float
        Largest orientation error drawn by :meth:`draw_lead_field`.
    """

    lead_fields: np.ndarray
    params: list = field(default_factory=list)
    name: str = ""
    max_tilt_deg: float = ENSEMBLE_RANGES["orientation_tilt_deg"]

    def __len__(self):
        return len(self.lead_fields)

    @property
    def n_channels(self):
        return self.lead_fields.shape[1]

    @property
    def n_sources(self):
        return self.lead_fields.shape[2]

    def draw_lead_field(self, rng):
        """A fixed-orientation lead field (n_channels, n_sources): a random member,
        each source tilted from the normal by up to ``max_tilt_deg`` degrees."""
        index, weights = self.draw_member(rng)
        return np.einsum("nmk,mk->nm", self.lead_fields[index].astype(np.float64), weights)

    def draw_member(self, rng):
        """The draws of :meth:`draw_lead_field`: a member index and the (n_sources, 3)
        unit orientation weights that combine its free-orientation lead field."""
        index = rng.integers(len(self))
        n_sources = self.lead_fields.shape[2]
        tilt = np.deg2rad(rng.uniform(0.0, self.max_tilt_deg, size=n_sources))
        azimuth = rng.uniform(0.0, 2 * np.pi, size=n_sources)
        weights = np.stack([np.sin(tilt) * np.cos(azimuth), np.sin(tilt) * np.sin(azimuth),
                            np.cos(tilt)], axis=-1)  # (M, 3), unit norm
        return index, weights

    def save(self, path):
        np.savez_compressed(path, lead_fields=self.lead_fields, name=self.name,
                            max_tilt_deg=self.max_tilt_deg, params=json.dumps(self.params))

    @classmethod
    def load(cls, path):
        try:
            with np.load(path, allow_pickle=False) as data:
                return cls(data["lead_fields"], json.loads(str(data["params"])),
                           str(data["name"]), float(data["max_tilt_deg"]))
        except (OSError, KeyError, ValueError, EOFError) as err:
            raise ValueError(f"cannot read head-model ensemble {path}: {err}") from err


def draw_member_params(rng):
    """One member's head-model parameters, drawn from :data:`ENSEMBLE_RANGES`."""
    r = ENSEMBLE_RANGES
    axis = rng.normal(size=3)
    return {
        "conductivity": [float(rng.uniform(*r["brain_conductivity"])),
                         float(rng.uniform(*r["skull_conductivity"])),
                         float(rng.uniform(*r["scalp_conductivity"]))],
        "head_scale": float(rng.uniform(*r["head_scale"])),
        "electrode_jitter_sd": float(rng.uniform(*r["electrode_jitter_sd"])),
        "rotation_axis": (axis / np.linalg.norm(axis)).tolist(),
        "rotation_deg": float(rng.uniform(0, r["coregistration_rotation_deg"])),
        "translation": (rng.uniform(-1, 1, size=3) * r["coregistration_translation"]
                        / np.sqrt(3)).tolist(),
        "seed": int(rng.integers(2 ** 31)),
    }


def _rotation(axis, degrees):
    """Rodrigues rotation matrix."""
    axis = np.asarray(axis, float)
    angle = np.deg2rad(degrees)
    k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    return np.eye(3) + np.sin(angle) * k + (1 - np.cos(angle)) * k @ k


def _scaled_surfaces(surfaces, scale, min_gap=0.0015):
    """Scalp and outer skull scaled radially about the centre; inner skull kept."""
    centre = surfaces["centre"]
    r_in = np.linalg.norm(surfaces["inner_skull"] - centre, axis=1)
    directions = (surfaces["inner_skull"] - centre) / r_in[:, None]
    r_out = np.linalg.norm(surfaces["outer_skull"] - centre, axis=1)
    r_skin = np.linalg.norm(surfaces["outer_skin"] - centre, axis=1)
    r_skin = np.maximum(r_skin * scale, r_in + 3 * min_gap)
    r_out = np.clip(r_in + (r_out - r_in) * scale, r_in + min_gap, r_skin - min_gap)
    return {**surfaces, "outer_skull": centre + directions * r_out[:, None],
            "outer_skin": centre + directions * r_skin[:, None]}


def make_member(cap, spacing, params, base_subjects_dir, bem_ico=ENSEMBLE_BEM_ICO):
    """Free-orientation, average-referenced lead field (N, M, 3) of one member."""
    import mne
    from threadpoolctl import threadpool_limits

    from . import templates

    rng = np.random.default_rng(params["seed"])
    surfaces = _scaled_surfaces(templates.make_head_surfaces(), params["head_scale"])
    with tempfile.TemporaryDirectory() as tmp:
        subjects_dir = Path(tmp)
        subj = subjects_dir / "fsaverage"
        (subj / "bem").mkdir(parents=True)
        (subj / "surf").symlink_to(Path(base_subjects_dir) / "fsaverage" / "surf")
        for name in ("inner_skull", "outer_skull", "outer_skin"):
            mne.write_surface(str(subj / "bem" / f"{name}.surf"), surfaces[name] * 1e3,
                              surfaces["tris"], overwrite=True)
        with threadpool_limits(1):
            model = mne.make_bem_model("fsaverage", ico=bem_ico,
                                       conductivity=params["conductivity"],
                                       subjects_dir=subjects_dir, verbose=False)
            bem = mne.make_bem_solution(model, verbose=False)
        src = templates.make_source_space(subjects_dir, spacing)
        info = templates.make_cap_info(cap)
        trans = mne.read_trans(templates._mne_data_dir() / "fsaverage-trans.fif")
        mri_pos = mne.transforms.apply_trans(trans, np.array([ch["loc"][:3]
                                                              for ch in info["chs"]]))
        # co-registration error: one rigid motion of the whole cap
        centre = surfaces["centre"]
        mri_pos = (mri_pos - centre) @ _rotation(params["rotation_axis"],
                                                 params["rotation_deg"]).T + centre
        mri_pos = mri_pos + np.asarray(params["translation"])
        # electrode placement error, per electrode
        jitter = rng.normal(scale=params["electrode_jitter_sd"], size=mri_pos.shape)
        norm = np.linalg.norm(jitter, axis=1, keepdims=True)
        limit = ENSEMBLE_RANGES["electrode_jitter_max"]
        mri_pos = mri_pos + jitter * np.minimum(1.0, limit / np.maximum(norm, 1e-12))
        direction = mri_pos - centre
        direction /= np.linalg.norm(direction, axis=1, keepdims=True)
        dist = templates.ray_mesh_distance(centre, direction, surfaces["outer_skin"],
                                           surfaces["tris"])
        if not np.all(np.isfinite(dist)):
            raise RuntimeError("could not project the perturbed electrodes onto the scalp")
        head_pos = mne.transforms.apply_trans(mne.transforms.invert_transform(trans),
                                              centre + direction * dist[:, None])
        montage = mne.channels.make_dig_montage(
            ch_pos=dict(zip(info["ch_names"], head_pos)), coord_frame="head",
            **templates._head_fiducials(trans))
        info.set_montage(montage, verbose=False)
        with threadpool_limits(1):
            fwd = mne.make_forward_solution(info, trans=trans, src=src, bem=bem, eeg=True,
                                            meg=False, verbose=False)
        fwd = mne.convert_forward_solution(fwd, surf_ori=True, force_fixed=False,
                                           use_cps=True, verbose=False)
    gain = fwd["sol"]["data"]  # (N, 3M): per source two tangential directions, then normal
    gain = gain - gain.mean(axis=0, keepdims=True)
    return gain.reshape(gain.shape[0], -1, 3)


def ensemble_path(cap="biosemi64", spacing="ico3", n_members=ENSEMBLE_MEMBERS,
                  random_state=ENSEMBLE_SEED, cache_dir=None):
    from .templates import default_cache_dir

    root = Path(cache_dir) if cache_dir else default_cache_dir()
    return root / "ensembles" / f"{cap}-{spacing}-n{n_members}-seed{random_state}.npz"


def build_head_ensemble(cap="biosemi64", spacing="ico3", n_members=ENSEMBLE_MEMBERS,
                        random_state=ENSEMBLE_SEED, bem_ico=ENSEMBLE_BEM_ICO, verbose=True):
    """Build a :class:`HeadModelEnsemble` (about 6 s per member on one core).

    Parameters
    ----------
    cap : str
        Template cap (see :func:`unfolded_sbl.list_forwards`).
    spacing : {"ico3", "ico4"}
    n_members : int
    random_state : int
    bem_ico : int
        BEM surface resolution of the members.
    verbose : bool
        Progress bar.
    """
    from tqdm.auto import tqdm

    from . import templates

    n_members = check_positive_int(n_members, "n_members")
    rng = np.random.default_rng(random_state)
    subjects_dir = templates.make_subjects_dir()
    params, members = [], []
    start = time.perf_counter()
    for _ in tqdm(range(n_members), desc=f"head models {cap}-{spacing}", disable=not verbose):
        p = draw_member_params(rng)
        members.append(make_member(cap, spacing, p, subjects_dir, bem_ico).astype(np.float32))
        params.append(p)
    ensemble = HeadModelEnsemble(np.stack(members), params, f"{cap}-{spacing}")
    ensemble.build_seconds = time.perf_counter() - start
    return ensemble


def load_head_ensemble(cap="biosemi64", spacing="ico3", n_members=ENSEMBLE_MEMBERS,
                       random_state=ENSEMBLE_SEED, cache_dir=None, verbose=True):
    """The cached ensemble, built on first use (see :func:`build_head_ensemble`)."""
    path = ensemble_path(cap, spacing, n_members, random_state, cache_dir)
    if path.exists():
        return HeadModelEnsemble.load(path)
    ensemble = build_head_ensemble(cap, spacing, n_members, random_state, verbose=verbose)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.npz")
    ensemble.save(tmp)
    shutil.move(tmp, path)  # never leave half a file behind an interrupt
    return ensemble
