"""Threads where several solvers share a machine: one process per job, each limited.

The solvers use every core by default (torch's intra-op threads, the BLAS behind numpy
and scipy, onnxruntime's thread pool).  When several jobs run at once, scikit-learn's
``n_jobs`` or a dask cluster, each job should use its share only, or the cores are
oversubscribed and every job slows down.  :func:`limit_threads` sets the share in the
current process; :func:`thread_limits_plugin` does it in every worker of a
``dask.distributed`` cluster and :func:`ray_runtime_env` in every worker of a ray cluster
(scikit-learn's default loky backend limits BLAS and OpenMP, which torch follows, by
itself).
"""

from __future__ import annotations

import contextlib


@contextlib.contextmanager
def limit_threads(n_threads):
    """Use ``n_threads`` threads for torch and the BLAS libraries inside the block
    (onnxruntime sessions take theirs when opened: ``intra_op_num_threads=``).

    Examples
    --------
    >>> import torch
    >>> from unfolded_sbl.parallel import limit_threads
    >>> with limit_threads(1):
    ...     torch.get_num_threads()
    1
    """
    import torch
    from threadpoolctl import threadpool_limits

    if isinstance(n_threads, bool) or not isinstance(n_threads, int) or n_threads < 1:
        raise ValueError(f"n_threads must be an integer >= 1, got {n_threads!r}")
    before = torch.get_num_threads()
    torch.set_num_threads(n_threads)
    try:
        with threadpool_limits(limits=n_threads):
            yield
    finally:
        torch.set_num_threads(before)


def set_worker_threads(n_threads):
    """Limit torch and BLAS threads of this process for good (a worker's setup)."""
    import torch
    from threadpoolctl import threadpool_limits

    torch.set_num_threads(n_threads)
    threadpool_limits(limits=n_threads)
    return n_threads


def thread_limits_plugin(n_threads=1):
    """A ``dask.distributed`` worker plugin that limits each worker's torch and BLAS to
    ``n_threads`` threads, so that a cluster's workers share the cores instead of each
    taking all of them::

        client.register_plugin(thread_limits_plugin(1))

    Parameters
    ----------
    n_threads : int
        Threads per worker (a machine's cores divided by its workers).
    """
    from distributed import WorkerPlugin

    if isinstance(n_threads, bool) or not isinstance(n_threads, int) or n_threads < 1:
        raise ValueError(f"n_threads must be an integer >= 1, got {n_threads!r}")

    class ThreadLimits(WorkerPlugin):
        idempotent = True
        name = "unfolded-sbl-thread-limits"

        def setup(self, worker):
            set_worker_threads(n_threads)

    return ThreadLimits()


def ray_runtime_env(n_threads=1):
    """A ray ``runtime_env`` whose workers run torch, OpenMP and the BLAS libraries on
    ``n_threads`` threads each (they read these variables when they start)::

        ray.init(runtime_env=ray_runtime_env(1))

    Parameters
    ----------
    n_threads : int
        Threads per worker (a machine's cores divided by its workers).

    Examples
    --------
    >>> from unfolded_sbl.parallel import ray_runtime_env
    >>> ray_runtime_env(2)["env_vars"]["OMP_NUM_THREADS"]
    '2'
    """
    if isinstance(n_threads, bool) or not isinstance(n_threads, int) or n_threads < 1:
        raise ValueError(f"n_threads must be an integer >= 1, got {n_threads!r}")
    names = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")
    return {"env_vars": {name: str(n_threads) for name in names}}
