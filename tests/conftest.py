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


@pytest.fixture(scope="session")
def demo_run(tmp_path_factory):
    """One ``unfolded-sbl demo --n-samples 2 --png`` run shared by the tests that read
    it: (exit code, printed text, PNG path)."""
    import contextlib
    import io

    from unfolded_sbl.cli import main

    png = tmp_path_factory.mktemp("demo") / "demo.png"
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        code = main(["demo", "--n-samples", "2", "--png", str(png)])
    return code, printed.getvalue(), png
