"""The trade-off benchmark's line between two sets of weights."""

import torch

from benchmarks.studies.tradeoff import interpolate


def test_interpolate_runs_from_start_to_end_and_keeps_integer_buffers():
    start = {"w": torch.tensor([1.0, 2.0]), "steps": torch.tensor(3)}
    end = {"w": torch.tensor([3.0, -2.0]), "steps": torch.tensor(9)}
    assert torch.equal(interpolate(start, end, 0.0)["w"], start["w"])
    assert torch.equal(interpolate(start, end, 1.0)["w"], end["w"])
    assert torch.allclose(interpolate(start, end, 0.25)["w"], torch.tensor([1.5, 1.0]))
    assert interpolate(start, end, 0.5)["steps"] == 3
