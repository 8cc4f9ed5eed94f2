"""Data-parallel training: two gloo processes launched by torchrun train the same
weights as one process drawing both ranks' streams."""

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

import unfolded_sbl as us

SCRIPT = textwrap.dedent("""
    import os
    import sys
    import numpy as np
    import torch
    import unfolded_sbl as us
    from unfolded_sbl.distributed import world
    from unfolded_sbl.training import Trainer

    if os.environ.get("STOP_AFTER_EPOCH"):  # every rank stops there, as a kill would
        save = Trainer._save

        def stop(self, *args):
            save(self, *args)
            if self.state["epoch"] == int(os.environ["STOP_AFTER_EPOCH"]):
                raise SystemExit(3)

        Trainer._save = stop
    rng = np.random.default_rng(42)
    fwd = us.ForwardModel(rng.normal(size=(16, 60)) * 50.0, rng.normal(size=(60, 3)) * 0.03)
    net = us.UnfoldedSBLRegressor(fwd, n_layers=3, max_epochs=2, steps_per_epoch=3,
                                  progressive_steps=0, batch_size=2, n_val=4,
                                  learning_rate=1e-2, random_state=7,
                                  simulator_params={"n_times": 20, "n_patches": (1, 3)},
                                  checkpoint=sys.argv[2] if len(sys.argv) > 2 else None)
    net.fit_simulated()
    rank, n_ranks = world()
    assert n_ranks == 2
    if rank == 0:
        torch.save(net.network_.state_dict(), sys.argv[1])
""")


def _single_process(batch_size, data_streams):
    rng = np.random.default_rng(42)
    fwd = us.ForwardModel(rng.normal(size=(16, 60)) * 50.0, rng.normal(size=(60, 3)) * 0.03)
    net = us.UnfoldedSBLRegressor(fwd, n_layers=3, max_epochs=2, steps_per_epoch=3,
                                  progressive_steps=0, batch_size=batch_size, n_val=4,
                                  learning_rate=1e-2, random_state=7,
                                  data_streams=data_streams,
                                  simulator_params={"n_times": 20, "n_patches": (1, 3)})
    return net.fit_simulated()


def _torchrun(tmp_path, *args, **env):
    script = tmp_path / "train.py"
    script.write_text(SCRIPT)
    return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                           "--nproc-per-node", "2", str(script), *map(str, args)],
                          capture_output=True, text=True, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1", **env})


def test_two_gloo_processes_train_as_one_process_with_both_streams(tmp_path):
    weights = tmp_path / "rank0.pt"
    run = _torchrun(tmp_path, weights)
    assert run.returncode == 0, run.stderr[-3000:]
    distributed = torch.load(weights)
    single = _single_process(batch_size=4, data_streams=2).network_.state_dict()
    # the corrections' weights are float32 (network.CORRECTION_DTYPE): gradients summed
    # across ranks instead of in one batch differ by float32 round-off
    for name, value in single.items():
        torch.testing.assert_close(distributed[name], value, rtol=1e-5, atol=1e-6)
    # the streams matter: one stream with the same global batch trains other weights
    other = _single_process(batch_size=4, data_streams=1).network_.state_dict()
    assert max(float((other[k] - v).abs().max()) for k, v in single.items()) > 1e-3


def test_a_killed_two_process_run_resumes_to_the_same_weights(tmp_path):
    """Stopped after the first epoch, then launched again: both ranks resume from rank
    0's checkpoint and draw the batches the uninterrupted run draws (the streams are
    reseeded per step from the checkpointed generator)."""
    weights, checkpoint = tmp_path / "rank0.pt", tmp_path / "train.ckpt"
    stopped = _torchrun(tmp_path, weights, checkpoint, STOP_AFTER_EPOCH="1")
    assert stopped.returncode != 0 and checkpoint.exists() and not weights.exists()
    assert torch.load(checkpoint, weights_only=False)["state"]["epoch"] == 1
    resumed = _torchrun(tmp_path, weights, checkpoint)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    history = torch.load(checkpoint, weights_only=False)["history"]
    assert [h["epoch"] for h in history] == [0, 1]  # one epoch before, one after
    distributed = torch.load(weights)
    single = _single_process(batch_size=4, data_streams=2).network_.state_dict()
    for name, value in single.items():
        torch.testing.assert_close(distributed[name], value, rtol=1e-5, atol=1e-6)


def test_data_streams_must_divide_the_batch():
    with pytest.raises(ValueError, match="multiple of the data streams"):
        _single_process(batch_size=3, data_streams=2)


def test_scaling_benchmark_runs_one_and_two_processes(capsys):
    from benchmarks import bench_scaling

    bench_scaling.main(["--steps", "1", "--batch", "4", "--layers", "2", "--no-write"])
    table = capsys.readouterr().out
    rows = [line for line in table.splitlines() if line.startswith("| 1 ") or
            line.startswith("| 2 ")]
    assert len(rows) == 2 and all(float(r.split("|")[2]) > 0 for r in rows)
