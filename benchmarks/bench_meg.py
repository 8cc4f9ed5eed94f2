"""MEG and MEG+EEG: fixed, loose and free orientation on simulated recordings.

The sensors, projectors and noise covariance are those of mne-python's test
recording (``tests/data/mne``: the sample dataset's 306 MEG and 60 EEG channels);
the forward model is built offline on fsaverage for them
(:func:`unfolded_sbl.templates.forward_for_recording`, ico3 sources, cached).
Problems are simulated in the whitened space (unit sensor noise): source time
courses and extents from :func:`unfolded_sbl.simulate`, each active location's
dipole tilted away from the template's cortical normal by up to ``--tilt``
degrees (real cortices are not the template's), scaled to ``--snr-db``.
Known-noise ClassicalCB then solves them with the orientation fixed (``loose=0``),
loose (0.2, MNE's default on the cortex) and free (1), and a shipped model runs
zero-shot with the orientation fixed, as ``us.apply`` runs it on whitened data; the
metrics compare each location's dipole length with the truth.

    python -m benchmarks.bench_meg [--n-problems 16] [--tilts 0 45 90] [--snr-db 5]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

import unfolded_sbl as us
from benchmarks._results import write_section
from unfolded_sbl.evaluation import format_table, score_sources
from unfolded_sbl.forward import loose_model

DATA = Path(__file__).resolve().parents[1] / "tests" / "data" / "mne"
MODALITIES = {"MEG": ("grad", "mag"), "MEG+EEG": ("eeg", "grad", "mag")}
LOOSE = (0.0, 0.2, 1.0)


def whitened_forward(kinds, spacing="ico3"):
    """The test recording's whitened forward model (free orientation, surface
    coordinates) for the channel types ``kinds``, on fsaverage."""
    import mne

    from unfolded_sbl.meg import whitened_problem
    from unfolded_sbl.templates import forward_for_recording

    evoked = mne.read_evokeds(DATA / "test-ave.fif.gz", verbose=False)[0]
    cov = mne.read_cov(DATA / "test-cov.fif", verbose=False)
    forward = forward_for_recording(evoked.info, kinds, spacing=spacing,
                                    log=lambda m: print(m, flush=True))
    _, white, _ = whitened_problem(evoked.copy().crop(0, 0.01), forward, cov, kinds,
                                   orientation="free")
    return white


def simulate_tilted(white, n_problems, tilt_deg, snr_db, random_state):
    """Whitened recordings of dipoles tilted up to ``tilt_deg`` from the normal.

    Returns the data (n, rank, T) with unit noise and the true sources per location
    (n, n_locations, T), both scaled to ``snr_db`` (signal power over noise power)."""
    rng = np.random.default_rng(random_state)
    fixed = loose_model(white, 0.0)[0]
    sources = us.simulate(fixed, n_problems, random_state=random_state).sources
    n, n_loc, n_times = sources.shape
    tilt = np.deg2rad(tilt_deg) * rng.uniform(size=(n, n_loc))
    azimuth = rng.uniform(0, 2 * np.pi, size=(n, n_loc))
    # components along the two tangential directions and the normal (the last)
    direction = np.stack([np.sin(tilt) * np.cos(azimuth), np.sin(tilt) * np.sin(azimuth),
                          np.cos(tilt)], axis=-1)
    dipoles = (sources[:, :, None, :] * direction[..., None]).reshape(n, 3 * n_loc, n_times)
    signal = np.einsum("cs,nst->nct", white.lead_field, dipoles)
    gain = np.sqrt(10 ** (snr_db / 10) / np.mean(signal ** 2, axis=(1, 2)))[:, None, None]
    noise = rng.standard_normal(signal.shape)
    return gain * signal + noise, gain * sources


def solve(white, data, loose, n_iter=None):
    """Known-noise ClassicalCB under ``loose``; each location's dipole length."""
    model, scale = loose_model(white, loose)
    params = {} if n_iter is None else {"n_iter": n_iter}
    est = us.ClassicalCB(model, noise="known", **params).fit()
    out = est.predict(data, noise_var=np.ones(data.shape[:2]))
    if model.n_orient == 1:
        return out
    out = out * scale[:, None] if scale is not None else out
    return np.linalg.norm(out.reshape(len(out), -1, 3, out.shape[-1]), axis=2)


def solve_learned(white, data, name):
    """A shipped model zero-shot on the fixed-orientation whitened problem, as
    ``us.apply`` runs it (torch, its regime checks on)."""
    model = us.load_pretrained(name, forward=loose_model(white, 0.0)[0])
    return model.predict(data)


def _add_row(rows, label, truth, estimate, locations):
    """``rows[label]``: LE and EMD (mm) and F1 of ``estimate``, printed as it comes."""
    scores = score_sources(truth, estimate, locations)
    rows[label] = {"le_mm": 1e3 * scores["le"], "f1": scores["f1"],
                   "emd_mm": 1e3 * scores["emd"]}
    print(label, {k: round(v, 3) for k, v in rows[label].items()}, flush=True)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--n-problems", type=int, default=16)
    parser.add_argument("--tilts", type=float, nargs="+", default=[0.0, 45.0, 90.0])
    parser.add_argument("--snr-db", type=float, default=5.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--learned", nargs="*", default=["deep-cb-joint"],
                        help="shipped models run zero-shot with fixed orientation")
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args(argv)

    rows, payload = {}, {"n_problems": args.n_problems, "snr_db": args.snr_db,
                         "seed": args.seed, "tilts": args.tilts}
    for modality, kinds in MODALITIES.items():
        white = whitened_forward(kinds)
        locations = white.locations()
        for tilt in args.tilts:
            data, truth = simulate_tilted(white, args.n_problems, tilt, args.snr_db,
                                          args.seed)
            for loose in LOOSE:
                _add_row(rows, f"{modality}, tilt <= {tilt:g} deg, loose {loose:g}", truth,
                         solve(white, data, loose), locations)
            for name in args.learned:
                _add_row(rows, f"{modality}, tilt <= {tilt:g} deg, {name} (zero-shot, loose 0)",
                         truth, solve_learned(white, data, name), locations)
    payload["rows"] = rows
    columns = ("le_mm", "f1", "emd_mm")
    table = format_table(rows, columns=columns, markdown=True)
    print(format_table(rows, columns=columns))
    body = (f"`python -m benchmarks.bench_meg` - the sensors and noise covariance of "
            "mne-python's test recording (sample dataset: 306 MEG channels, 60 EEG), "
            "a forward model built offline on fsaverage for them (ico3, 1284 locations, "
            "free orientation), "
            f"{args.n_problems} simulated problems per row in the whitened space at "
            f"{args.snr_db:g} dB, each active dipole tilted from the template's cortical "
            "normal by a uniform angle up to the row's tilt. Known-noise ClassicalCB with "
            "the orientation fixed (loose 0), loose (0.2) and free (1), and shipped models "
            "zero-shot with the orientation fixed (torch, regime checks on); LE and EMD in "
            "mm, "
            "F1 of the supports, on each location's dipole length.\n\n" + table)
    if not args.no_write:
        write_section("meg", "MEG and MEG+EEG: fixed, loose and free orientation", body,
                      payload)


if __name__ == "__main__":
    main()
