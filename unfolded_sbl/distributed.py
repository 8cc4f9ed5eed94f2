"""Data-parallel training across processes (``torchrun``): who am I, and starting up.

Launched by ``torchrun`` (``WORLD_SIZE`` > 1 in the environment), training joins the
process group (gloo on the CPU, NCCL on GPUs), each rank draws its own simulator stream
and :class:`torch.nn.parallel.DistributedDataParallel` averages the gradients, so the
global batch is the ranks' batches together.  Not launched so, everything runs in one
process as before.
"""

from __future__ import annotations

import os

import torch.distributed as dist


def world():
    """(rank, world size) of this process: (0, 1) outside a process group."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def init_from_env(device="cpu"):
    """Join the process group ``torchrun`` set up (a no-op when not launched by it or
    already joined); returns :func:`world`."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and dist.is_available() and not (
            dist.is_initialized()):
        dist.init_process_group("nccl" if str(device).startswith("cuda") else "gloo")
    return world()
