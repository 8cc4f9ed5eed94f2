import pickle
import time

import numpy as np
import pytest
import scipy.sparse as sp
from hypothesis import given, settings
from hypothesis import strategies as st

import unfolded_sbl as us


def test_templates_listed_and_load_fast():
    names = us.list_forwards()
    for cap in ("biosemi64", "things63", "biosemi128"):
        for spacing in ("ico3", "ico4"):
            assert f"{cap}-{spacing}" in names
            assert f"{cap}-{spacing}-perturbed" in names
    start = time.perf_counter()
    fwd = us.load_forward()
    assert time.perf_counter() - start < 5  # generous: milliseconds in practice
    assert fwd.name == "biosemi64-ico3"


@pytest.mark.parametrize("name,n_channels,n_sources", [
    ("biosemi64-ico3", 64, 1284), ("things63-ico3", 63, 1284), ("things63-ico4", 63, 5124),
    ("biosemi128-ico3", 128, 1284)])
def test_template_contents(name, n_channels, n_sources):
    fwd = us.load_forward(name)
    assert fwd.lead_field.shape == (n_channels, n_sources)
    assert np.all(np.isfinite(fwd.lead_field))
    # average reference: every column sums to zero, rank N - 1
    np.testing.assert_allclose(fwd.lead_field.sum(0), 0, atol=1e-6 * np.abs(fwd.lead_field).max())
    assert np.linalg.matrix_rank(fwd.lead_field) == n_channels - 1
    # positions in metres, inside a head-sized box
    assert np.abs(fwd.positions).max() < 0.12
    assert fwd.adjacency.shape == (n_sources, n_sources)
    assert (fwd.adjacency != fwd.adjacency.T).nnz == 0
    degree = np.asarray(fwd.adjacency.sum(1)).ravel()
    assert degree.min() >= 3  # a triangulated surface
    assert [len(v) for v in fwd.vertices] == [n_sources // 2] * 2
    np.testing.assert_allclose(np.linalg.norm(fwd.normals, axis=1), 1, atol=1e-5)
    assert len(fwd.ch_names) == n_channels


def test_neighbours_are_close(fwd):
    rows, cols = fwd.adjacency.nonzero()
    dist = np.linalg.norm(fwd.positions[rows] - fwd.positions[cols], axis=1)
    assert 0.005 < np.median(dist) < 0.02  # ico3 spacing is about 10 mm


def test_perturbed_differs_but_correlates():
    nominal = us.load_forward("biosemi64-ico3")
    perturbed = us.load_forward("biosemi64-ico3-perturbed")
    assert nominal.ch_names == perturbed.ch_names
    np.testing.assert_array_equal(nominal.positions, perturbed.positions)
    rel = np.linalg.norm(nominal.lead_field - perturbed.lead_field) / np.linalg.norm(
        nominal.lead_field)
    assert 0.05 < rel < 0.6


def test_unknown_template_name():
    with pytest.raises(ValueError, match="unknown forward model 'nope'.*biosemi64-ico3"):
        us.load_forward("nope")
    with pytest.raises(TypeError, match="name must be a str"):
        us.load_forward(3)


def test_forward_from_arrays_validates():
    rng = np.random.default_rng(0)
    L, pos = rng.normal(size=(8, 20)), rng.normal(size=(20, 3)) * 0.05
    fwd = us.ForwardModel(L, pos)
    np.testing.assert_allclose(fwd.lead_field.sum(0), 0, atol=1e-12)
    assert fwd.ch_names[0] == "EEG000"
    assert fwd.adjacency.nnz > 0 and sp.issparse(fwd.adjacency)
    with pytest.raises(ValueError, match=r"positions must have shape \(n_sources, 3\)"):
        us.ForwardModel(L, pos[:10])
    bad = L.copy()
    bad[0, 0] = np.nan
    with pytest.raises(ValueError, match="lead_field contains NaN"):
        us.ForwardModel(bad, pos)
    with pytest.raises(ValueError, match="lead_field must be 2-D"):
        us.ForwardModel(L[0], pos)
    with pytest.raises(ValueError, match="ch_names has 3 names for 8 channels"):
        us.ForwardModel(L, pos, ch_names=["a", "b", "c"])
    with pytest.raises(ValueError, match="all zeros"):
        us.ForwardModel(np.zeros((8, 20)), pos)
    with pytest.raises(ValueError, match="adjacency must have shape"):
        us.ForwardModel(L, pos, adjacency=np.eye(3))


def test_save_load_roundtrip_and_pickle(tmp_path, small_fwd):
    fname = tmp_path / "f.npz"
    small_fwd.save(fname)
    back = us.ForwardModel.load(fname)
    np.testing.assert_allclose(back.lead_field, small_fwd.lead_field, rtol=0,
                               atol=1e-6 * np.abs(small_fwd.lead_field).max())
    assert (back.adjacency != small_fwd.adjacency).nnz == 0
    again = pickle.loads(pickle.dumps(small_fwd))
    np.testing.assert_array_equal(again.lead_field, small_fwd.lead_field)


def test_corrupted_forward_file(tmp_path):
    fname = tmp_path / "broken.npz"
    fname.write_bytes(b"not a zip file at all")
    with pytest.raises(ValueError, match="cannot read forward model file"):
        us.ForwardModel.load(fname)


def test_from_mne_refuses_other_objects():
    # from_mne on a real computed mne.Forward is exercised by the builder test.
    with pytest.raises(TypeError, match="mne.Forward"):
        us.ForwardModel.from_mne(np.zeros((3, 3)))


def test_pick_channels_re_references_and_renames(fwd):
    names = fwd.ch_names[10:40][::-1]
    sub = fwd.pick_channels([n.upper() for n in names])  # matched case-insensitively
    rows = [fwd.ch_names.index(n) for n in names]
    expected = fwd.lead_field[rows] - fwd.lead_field[rows].mean(axis=0)
    np.testing.assert_allclose(sub.lead_field, expected, atol=1e-12 * np.abs(expected).max())
    np.testing.assert_allclose(sub.lead_field.mean(axis=0), 0, atol=1e-12)
    assert sub.ch_names == names
    np.testing.assert_array_equal(sub.ch_pos, fwd.ch_pos[rows])
    assert sub.n_sources == fwd.n_sources and (sub.adjacency != fwd.adjacency).nnz == 0
    # a subset is not the template: nothing may look it up by the template's name
    assert sub.name not in us.list_forwards() and str(len(names)) in sub.name
    assert fwd.pick_channels(fwd.ch_names).name == fwd.name


def test_pick_channels_refuses_unknown_and_duplicate_names(fwd):
    with pytest.raises(ValueError, match="not in the forward model.*'XYZ'"):
        fwd.pick_channels(["Cz", "XYZ"])
    with pytest.raises(ValueError, match="duplicates"):
        fwd.pick_channels(["Cz", "cz"])


def test_templates_carry_cap_spacing_and_variant_as_fields(tmp_path):
    """A forward model says its cap, spacing and variant in fields (not in its name);
    they survive save/load and channel subsets, and resolve the perturbed variant."""
    from unfolded_sbl.forward import find_template
    from unfolded_sbl.resolve import perturbed_variant

    fwd = us.load_forward("things63-ico4")
    assert (fwd.cap, fwd.spacing, fwd.variant) == ("things63", "ico4", "nominal")
    assert find_template("things63", "ico4", "perturbed") == "things63-ico4-perturbed"
    assert find_template("nope", "ico3") is None
    perturbed = perturbed_variant(fwd)
    assert perturbed.name == "things63-ico4-perturbed" and perturbed.variant == "perturbed"
    sub = fwd.pick_channels(fwd.ch_names[:20])
    assert sub.cap == "things63" and perturbed_variant(sub) is None  # not the template
    fwd.save(tmp_path / "f.npz")
    back = us.ForwardModel.load(tmp_path / "f.npz")
    assert (back.cap, back.spacing, back.variant) == ("things63", "ico4", "nominal")
    renamed = us.ForwardModel(fwd.lead_field, fwd.positions, fwd.ch_names,
                              name="biosemi64-ico3")  # a misleading name alone
    assert perturbed_variant(renamed) is None
    with pytest.raises(ValueError, match="variant"):
        us.ForwardModel(fwd.lead_field, fwd.positions, variant="odd")


def test_one_resolver_for_names_files_objects_and_channels(tmp_path):
    from unfolded_sbl.resolve import resolve_forward

    default = resolve_forward()
    assert default.name == "biosemi64-ico3"
    assert resolve_forward("things63-ico3").n_channels == 63
    default.save(tmp_path / "mine.npz")
    assert resolve_forward(tmp_path / "mine.npz").n_sources == default.n_sources
    assert resolve_forward(default) is default
    # a recording's channels: the first template holding them, rows in its order
    picked = resolve_forward(ch_names=["cz", "Oz", "Fp1"])
    assert picked.ch_names == ["cz", "Oz", "Fp1"] and picked.cap == "biosemi64"
    with pytest.raises(ValueError, match=r"missing from the forward model.*\['XYZ'\]"):
        resolve_forward("biosemi64-ico3", ch_names=["Cz", "XYZ"])
    with pytest.raises(ValueError, match="neither a shipped template"):
        resolve_forward("no-such-cap")
    # estimators resolve their forward parameter the same way
    est = us.ClassicalCB(forward=tmp_path / "mine.npz").fit()
    assert est.forward_.n_channels == 64


def _free_surface_model(n_locations, rng):
    """A free-orientation model on a two-hemisphere 'surface' (normals last)."""
    lead_field = rng.normal(size=(8, 3 * n_locations))
    positions = np.repeat(rng.normal(size=(n_locations, 3)) * 0.05, 3, axis=0)
    half = n_locations // 2
    return us.ForwardModel(lead_field, positions, average_reference=False, n_orient=3,
                           vertices=[np.arange(half), np.arange(n_locations - half)])


@settings(max_examples=25, deadline=None)
@given(loose=st.floats(0.0, 1.0), seed=st.integers(0, 2 ** 16))
def test_loose_model_scales_the_tangential_dipoles(loose, seed):
    """The tangential columns carry sqrt(loose) of their gain, the normal ones all of
    it, and ``scale`` maps the solved amplitudes back: model.L @ (x / scale) == L @ x."""
    from unfolded_sbl.forward import loose_model

    free = _free_surface_model(6, np.random.default_rng(seed))
    model, scale = loose_model(free, loose)
    if loose == 0:
        assert model.n_orient == 1 and scale is None
        np.testing.assert_array_equal(model.lead_field, free.lead_field[:, 2::3])
        assert model.adjacency.shape == (6, 6)
        return
    if loose == 1:
        assert model is free and scale is None
        return
    assert model.n_orient == 3
    np.testing.assert_allclose(scale[2::3], 1.0)
    np.testing.assert_allclose(scale[0::3], np.sqrt(loose))
    x = np.random.default_rng(seed + 1).normal(size=free.n_sources)
    np.testing.assert_allclose(model.lead_field @ (x / scale), free.lead_field @ x)


def test_loose_model_auto_and_refusals():
    from unfolded_sbl.forward import loose_model

    rng = np.random.default_rng(0)
    free = _free_surface_model(6, rng)
    _, scale = loose_model(free, "auto")
    np.testing.assert_allclose(scale[0], np.sqrt(0.2))  # MNE's default on the cortex
    volume = us.ForwardModel(free.lead_field, free.positions, average_reference=False,
                             n_orient=3)
    assert loose_model(volume, "auto") == (volume, None)
    fixed = us.ForwardModel(rng.normal(size=(8, 6)), rng.normal(size=(6, 3)))
    assert loose_model(fixed, "auto") == (fixed, None)
    with pytest.raises(ValueError, match="loose=0.2 needs a free-orientation"):
        loose_model(fixed, 0.2)
    with pytest.raises(ValueError, match="needs a cortical surface"):
        loose_model(volume, 0.5)
    for bad in (1.5, -0.1, "loose", None):
        with pytest.raises(ValueError, match="loose must be a number in"):
            loose_model(free, bad)
