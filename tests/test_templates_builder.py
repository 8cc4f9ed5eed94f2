"""The builder reproduces the shipped templates (at a coarser BEM for speed)."""

import numpy as np
import pytest

import unfolded_sbl as us
from unfolded_sbl import templates


@pytest.fixture(scope="module")
def subjects_dir(tmp_path_factory):
    return templates.make_subjects_dir(tmp_path_factory.mktemp("subjects"))


def test_head_surfaces_nested():
    surf = templates.make_head_surfaces()
    centre = surf["centre"]
    radius = {k: np.linalg.norm(surf[k] - centre, axis=1)
              for k in ("inner_skull", "outer_skull", "outer_skin")}
    skull = radius["outer_skull"] - radius["inner_skull"]
    scalp = radius["outer_skin"] - radius["outer_skull"]
    assert skull.min() >= 0.0015 - 1e-9 and skull.max() <= 0.006 + 1e-9
    assert scalp.min() > 0.001


def test_ray_mesh_distance_unit_cube_face():
    rr = np.array([[1.0, -1, -1], [1, 1, -1], [1, 1, 1], [1, -1, 1]])
    tris = np.array([[0, 1, 2], [0, 2, 3]])
    dist = templates.ray_mesh_distance(np.zeros(3), np.array([[1.0, 0, 0], [-1.0, 0, 0]]),
                                       rr, tris)
    assert dist[0] == pytest.approx(1.0)
    assert np.isinf(dist[1])


def test_builder_reproduces_shipped_default(subjects_dir):
    """Rebuild biosemi64-ico3 with an ico3 BEM: same geometry, lead field within
    the BEM-resolution difference (ico3 vs ico4 BEM differ by about 0.08)."""
    fwd_mne = templates.make_template_forward("biosemi64", "ico3", bem_ico=3,
                                              subjects_dir=subjects_dir)
    rebuilt = us.ForwardModel.from_mne(fwd_mne)
    shipped = us.load_forward("biosemi64-ico3")
    assert rebuilt.ch_names == shipped.ch_names
    np.testing.assert_allclose(rebuilt.positions, shipped.positions, atol=1e-6)
    for a, b in zip(rebuilt.vertices, shipped.vertices):
        np.testing.assert_array_equal(a, b)
    assert (rebuilt.adjacency != shipped.adjacency).nnz == 0
    diff = templates.relative_difference(shipped.lead_field, rebuilt.lead_field)
    assert diff["relative"] < 0.2
    assert diff["median_column_correlation"] > 0.99


def test_forward_for_any_standard_montage(subjects_dir, tmp_path):
    """A cap no shipped template has (T3/T4 names) is built offline, then cached."""
    names = ["Fp1", "FPz", "T3", "T4", "Cz", "Pz", "O1", "O2"]  # FPz: case-insensitive
    messages = []
    fwd = templates.forward_for_montage(names, bem_ico=3, cache_dir=tmp_path,
                                        subjects_dir=subjects_dir, log=messages.append)
    assert fwd.ch_names == names and fwd.n_sources == 1284
    assert any("building" in m for m in messages)
    assert np.all(np.isfinite(fwd.lead_field)) and np.all(fwd.lead_field.std(axis=1) > 0)
    # bipolar (reference-free) rows agree with the shipped 64-channel template (other
    # montage file, other BEM resolution)
    shipped = us.load_forward()

    def bipolar(model, a, b):
        return model.lead_field[model.ch_names.index(a)] - model.lead_field[
            model.ch_names.index(b)]

    pairs = [("O1", "Cz"), ("Pz", "Cz"), ("Fp1", "O2"), ("Fp1", "Cz"), ("O2", "Pz")]
    corr = np.array([[np.corrcoef(bipolar(fwd, *p), bipolar(shipped, *q))[0, 1]
                      for q in pairs] for p in pairs])
    assert np.all(np.diag(corr) > 0.8)
    # each pair matches itself best: channels sit where their names say
    np.testing.assert_array_equal(corr.argmax(axis=1), np.arange(len(pairs)))
    messages.clear()
    again = templates.forward_for_montage(names, bem_ico=3, cache_dir=tmp_path,
                                          subjects_dir=subjects_dir, log=messages.append)
    assert not messages  # loaded from the cache, nothing rebuilt
    np.testing.assert_array_equal(again.ch_names, fwd.ch_names)
    np.testing.assert_allclose(again.lead_field, fwd.lead_field, rtol=1e-5,
                               atol=1e-6 * np.abs(fwd.lead_field).max())
    with pytest.raises(ValueError, match=r"without a position: \['E17'\]"):
        templates.forward_for_montage(["Cz", "E17"], cache_dir=tmp_path,
                                      subjects_dir=subjects_dir)
