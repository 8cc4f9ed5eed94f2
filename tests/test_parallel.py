"""Search beyond one process: threads per job, dask workers, estimators on workers."""

import pickle

import numpy as np
import pytest
import torch

import unfolded_sbl as us
from unfolded_sbl.parallel import limit_threads


def test_limit_threads_sets_and_restores_torch_threads():
    before = torch.get_num_threads()
    with limit_threads(1):
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == before
    with pytest.raises(ValueError, match="n_threads must be an integer >= 1"):
        with limit_threads(0):
            pass


def test_fitted_estimators_pickle_with_their_torch_and_onnxruntime_state(fwd, data):
    X = data.sensors[:2]
    for est in (us.ClassicalCB(fwd, n_iter=5).fit(),
                us.load_pretrained("deep-cb-joint", forward=fwd),
                us.load_pretrained("deep-cb-joint", forward=fwd, backend="onnx")):
        back = pickle.loads(pickle.dumps(est))
        np.testing.assert_allclose(back.predict(X), est.predict(X), rtol=1e-10, atol=0)


@pytest.fixture(scope="module")
def client():
    distributed = pytest.importorskip("distributed")
    from unfolded_sbl.parallel import thread_limits_plugin

    cluster = distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                       dashboard_address=None)
    client = distributed.Client(cluster)
    client.register_plugin(thread_limits_plugin(1))
    yield client
    client.close()
    cluster.close()


def test_grid_search_on_a_dask_cluster_matches_the_local_search(client, fwd):
    """GridSearchCV through joblib's dask backend on two single-threaded workers: the
    same cv_results_ as in this process; the workers' torch runs one thread."""
    import joblib
    from sklearn.model_selection import GridSearchCV

    assert set(client.run(torch.get_num_threads).values()) == {1}
    train = us.simulate(fwd, 8, random_state=4, n_times=40)
    search = GridSearchCV(us.ClassicalCB(fwd), {"n_iter": [3, 8]}, cv=2,
                          scoring=us.rmse_scorer)
    local = search.fit(train.sensors, train.sources).cv_results_
    with joblib.parallel_config(backend="dask"):
        distributed_search = GridSearchCV(us.ClassicalCB(fwd), {"n_iter": [3, 8]}, cv=2,
                                          scoring=us.rmse_scorer, n_jobs=2)
        remote = distributed_search.fit(train.sensors, train.sources).cv_results_
    np.testing.assert_allclose(remote["mean_test_score"], local["mean_test_score"],
                               rtol=1e-10)


def test_networks_and_onnx_models_predict_on_a_worker(client, fwd, data):
    X = data.sensors[:2]
    for est in (us.load_pretrained("deep-cb-joint", forward=fwd),
                us.load_pretrained("deep-cb-joint", forward=fwd, backend="onnx")):
        remote = client.submit(lambda e, x: e.predict(x), est, X).result()
        np.testing.assert_allclose(remote, est.predict(X), rtol=1e-6, atol=0)


def test_parallelism_guide_dask_example_runs(client):
    """The guide's cluster example, run as written (its cluster on this machine)."""
    import re
    from pathlib import Path

    guide = Path(__file__).resolve().parents[1] / "docs" / "guide" / "parallelism.rst"
    text = guide.read_text()
    block = text[text.index("Searching on a dask cluster"):]
    code = re.search(r"code-block:: python\n\n(.*?)\n\n\S", block, re.S).group(1)
    code = "\n".join(line[3:] for line in code.splitlines())
    namespace = {}
    exec(compile(code, "parallelism guide", "exec"), namespace)
    try:
        assert namespace["search"].best_params_["n_iter"] in (3, 8)
    finally:
        namespace["client"].close()
        namespace["cluster"].close()


def _guide_block(title):
    import re
    from pathlib import Path

    guide = Path(__file__).resolve().parents[1] / "docs" / "guide" / "parallelism.rst"
    block = guide.read_text().split(title, 1)[1]
    code = re.search(r"code-block:: python\n\n(.*?)(?:\n\n\S|\Z)", block, re.S).group(1)
    return "\n".join(line[3:] for line in code.splitlines())


def test_grid_search_on_ray_matches_the_local_search(fwd):
    """The guide's ray example, run as written: the same cv_results_ as in this
    process, and the workers' torch runs one thread."""
    ray = pytest.importorskip("ray")
    from sklearn.model_selection import GridSearchCV

    namespace = {}
    try:
        exec(compile(_guide_block("Searching on a ray cluster"), "parallelism guide", "exec"),
             namespace)

        @ray.remote
        def threads():
            import torch

            return torch.get_num_threads()

        assert set(ray.get([threads.remote() for _ in range(2)])) == {1}
    finally:
        ray.shutdown()
    train = namespace["train"]
    local = GridSearchCV(us.ClassicalCB(namespace["fwd"]), {"n_iter": [3, 8]}, cv=2,
                         scoring=us.rmse_scorer).fit(train.sensors, train.sources)
    np.testing.assert_allclose(namespace["search"].cv_results_["mean_test_score"],
                               local.cv_results_["mean_test_score"], rtol=1e-10)


def test_ray_runtime_env_checks_its_argument():
    from unfolded_sbl.parallel import ray_runtime_env

    with pytest.raises(ValueError, match="n_threads must be an integer >= 1"):
        ray_runtime_env(0)
