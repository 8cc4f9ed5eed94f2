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
