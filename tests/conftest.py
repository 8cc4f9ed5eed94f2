import numpy as np
import pytest

import unfolded_sbl as us


@pytest.fixture(scope="session")
def fwd():
    """The embedded default template (64 channels, 1284 sources)."""
    return us.load_forward()


@pytest.fixture(scope="session")
def small_fwd():
    """A small random forward model (16 channels, 60 sources) for fast tests."""
    rng = np.random.default_rng(42)
    positions = rng.normal(size=(60, 3)) * 0.03
    lead_field = rng.normal(size=(16, 60)) * 50.0
    return us.ForwardModel(lead_field, positions, name="small")


@pytest.fixture(scope="session")
def data(fwd):
    return us.simulate(fwd, 8, random_state=0)
