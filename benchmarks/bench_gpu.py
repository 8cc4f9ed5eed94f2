"""GPU timings: ClassicalCB vs MNE gamma_map, torch and onnxruntime-CUDA inference of
every shipped model, training throughput, and the training simulator on the host and
on the device.

    python -m benchmarks.bench_gpu             # on a machine with a CUDA GPU (< 5 min)
    python -m benchmarks.bench_gpu --dry-run   # every path on the CPU, tiny sizes, no
                                               # RESULTS.md section (CI-sized)

Without a GPU (and without ``--dry-run``) the script writes the ``gpu`` section
saying so, and exits.  Times are per sample, measured in one run after a
warm-up call; ratios compare methods on the same device in the same run.
"""

from __future__ import annotations

import argparse
import time
import warnings

import torch

import unfolded_sbl as us
from benchmarks._results import write_section


def _timed(fn, repeat=1):
    fn()  # warm-up: kernels, allocator, onnxruntime session
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(repeat):
        fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return (time.perf_counter() - start) / repeat


def classical_vs_mne(fwd, data, device, n_mne, settings=((25, 0.0, "25 iterations"),
                                                           (1000, 1e-4, "to convergence"))):
    from mne.inverse_sparse._gamma_map import _gamma_map_opt

    rows = {}
    X = data.sensors
    for n_iter, tol, label in settings:
        est = us.ClassicalCB(fwd, n_iter=n_iter, tol=tol, device=device).fit()
        ours = _timed(lambda: est.predict(X)) / len(X)
        start = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            for i in range(n_mne):
                Y = X[i] - X[i].mean(0)
                L = fwd.lead_field - fwd.lead_field.mean(0)
                _gamma_map_opt(Y / Y.std(), L, alpha=0.1, maxit=n_iter, tol=tol,
                               update_mode=2, verbose=False)
        mne_s = (time.perf_counter() - start) / n_mne
        rows[label] = {"ClassicalCB_ms": 1e3 * ours, "mne_gamma_map_ms": 1e3 * mne_s,
                       "speed_up": mne_s / ours}
    return rows


def inference(fwd, device, batches, models, providers):
    rows = {}
    for name in models:
        net = us.load_pretrained(name, forward=fwd, device=device)
        onnx = us.load_pretrained(name, forward=fwd, backend="onnx", providers=providers)
        for batch in batches:
            data = us.simulate(fwd, batch, random_state=batch)
            kwargs = {} if net.learn_noise else {"noise_var": data.noise_var}
            rows[f"{name} | {batch}"] = {
                "torch_ms": 1e3 * _timed(lambda: net.predict(data.sensors, **kwargs)) / batch,
                "onnx_ms": 1e3 * _timed(lambda: onnx.predict(data.sensors, **kwargs)) / batch,
                "onnx_provider": onnx.provider_}
    return rows


def training(fwd, device, presets, steps, batch_size):
    rows = {}
    for name, correction in presets.items():
        net = us.UnfoldedSBLRegressor(fwd, correction=correction, max_epochs=1,
                                      steps_per_epoch=steps, progressive_steps=0,
                                      batch_size=batch_size, n_val=0, device=device,
                                      random_state=0)
        start = time.perf_counter()
        net.fit_simulated()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        rows[name] = {"samples_per_s": steps * batch_size / (time.perf_counter() - start),
                      "batch_size": batch_size}
    return rows


def simulator(fwd, device, batch_size, repeat=3):
    """Samples/s of the robust training simulator: assembled for the host (numpy)
    and on ``device`` (torch tensors there, what ``fit_simulated`` draws)."""
    from unfolded_sbl.simulate import ROBUST_SIMULATOR

    rows = {}
    for label, where in (("host (numpy)", None), (f"on the device ({device})", device)):
        sim = us.Simulator(fwd, random_state=0, device=where, **ROBUST_SIMULATOR)
        seconds = _timed(lambda: sim.draw(batch_size), repeat)
        rows[label] = {"samples_per_s": batch_size / seconds, "batch_size": batch_size}
    return rows


def markdown(device_name, classical, infer, train, sim):
    lines = [f"Device: {device_name}.", "", "| ClassicalCB vs MNE gamma_map | ClassicalCB "
             "ms/sample | gamma_map ms/sample | speed-up |", "|---|---|---|---|"]
    lines += [f"| {k} | {v['ClassicalCB_ms']:.2f} | {v['mne_gamma_map_ms']:.1f} | "
              f"x{v['speed_up']:.1f} |" for k, v in classical.items()]
    lines += ["", "| model, batch | torch ms/sample | onnxruntime ms/sample | provider |",
              "|---|---|---|---|"]
    lines += [f"| {k} | {v['torch_ms']:.2f} | {v['onnx_ms']:.2f} | {v['onnx_provider']} |"
              for k, v in infer.items()]
    lines += ["", "| training (float64 solver) | samples/s |", "|---|---|"]
    lines += [f"| {k}, batch {v['batch_size']} | {v['samples_per_s']:.1f} |"
              for k, v in train.items()]
    lines += ["", "| robust training simulator | samples/s |", "|---|---|"]
    lines += [f"| {k}, batch {v['batch_size']} | {v['samples_per_s']:.1f} |"
              for k, v in sim.items()]
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dry-run", action="store_true",
                        help="run every path on the CPU with tiny sizes; write nothing")
    args = parser.parse_args(argv)
    has_gpu = torch.cuda.is_available()
    if not has_gpu and not args.dry_run:
        write_section("gpu", "GPU timings (benchmarks/bench_gpu.py)",
                      "Not run: no CUDA GPU was available to the session that wrote this "
                      "report (`torch.cuda.is_available()` was False). Every device path is "
                      "tested on the CPU (`tests/test_devices.py`); run `python -m "
                      "benchmarks.bench_gpu` on a GPU machine to fill this section.")
        print("no CUDA GPU: wrote the 'not run' section")
        return
    device = "cuda" if has_gpu and not args.dry_run else "cpu"
    providers = None if device == "cuda" else ["CPUExecutionProvider"]
    fwd = us.load_forward()
    models = us.list_pretrained(fwd)
    if args.dry_run:
        data = us.simulate(fwd, 2, random_state=0, n_times=10)
        classical = classical_vs_mne(fwd, data, device, n_mne=1,
                                     settings=((3, 0.0, "3 iterations"),
                                               (10, 1e-2, "to tol 1e-2")))
        infer = inference(fwd, device, (1, 2), ["deep-cb-joint"], providers)
        train = training(fwd, device, {"mlp": "mlp"}, steps=1, batch_size=2)
        sim = simulator(fwd, device, batch_size=2, repeat=1)
        print(markdown("CPU (dry run)", classical, infer, train, sim))
        return
    data = us.simulate(fwd, 64, random_state=0)
    classical = classical_vs_mne(fwd, data, device, n_mne=4)
    infer = inference(fwd, device, (1, 64, 256), models, providers)
    train = training(fwd, device, {"Deep CB (mlp)": "mlp", "Deep Graph CB (graph)": "graph",
                                   "Deep Attn CB (attention)": "attention"},
                     steps=5, batch_size=32)
    sim = simulator(fwd, device, batch_size=32)
    name = torch.cuda.get_device_name(0)
    body = markdown(name, classical, infer, train, sim)
    write_section("gpu", "GPU timings (benchmarks/bench_gpu.py)", body,
                  {"device": name, "classical": classical, "inference": infer,
                   "training": train, "simulator": sim})
    print(body)


if __name__ == "__main__":
    main()
