"""Localise EEG with a self-contained unfolded_sbl ONNX file: onnxruntime and numpy only.

    python localize.py SOLVER.onnx RECORDING.npy [--out SOURCES.npy]

RECORDING.npy holds EEG in volts, shape (channels, times) or (samples, channels, times),
channels in the order the file's contract lists (any reference). The file does the rest:
average reference, scaling, the solver, and sources back in A m.
"""

import argparse
import json

import numpy as np
import onnxruntime as ort


def load(path):
    """The session and the file's contract (its ``unfolded_sbl.contract`` metadata)."""
    options = ort.SessionOptions()
    # the buffer-sharing planner costs seconds on a learned model's thousands of nodes
    options.enable_mem_reuse = False
    session = ort.InferenceSession(path, sess_options=options,
                                   providers=["CPUExecutionProvider"])
    contract = json.loads(session.get_modelmeta().custom_metadata_map["unfolded_sbl.contract"])
    return session, contract


def localize(session, contract, eeg):
    """Sources (samples, sources, times) of ``eeg`` (samples, channels, times) in volts."""
    eeg = np.asarray(eeg)
    if eeg.ndim == 2:
        eeg = eeg[None]
    expected = contract["forward"]["n_channels"]
    if eeg.ndim != 3 or eeg.shape[1] != expected:
        raise ValueError(f"the recording must have shape (channels={expected}, times) or "
                         f"(samples, {expected}, times), got {eeg.shape}")
    outputs = session.run(None, {"sensors": eeg.astype(np.float64)})
    return dict(zip([o.name for o in session.get_outputs()], outputs))


def main():
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", help="a self-contained ONNX file (one input: sensors)")
    parser.add_argument("recording", help=".npy of EEG in volts")
    parser.add_argument("--out", default=None, help="write the sources (A m) to this .npy")
    args = parser.parse_args()
    session, contract = load(args.model)
    result = localize(session, contract, np.load(args.recording))
    sources = result["sources"]
    power = (sources ** 2).sum(axis=1)                      # (samples, times)
    solver = contract.get("model") or contract["solver"]
    for i, t in enumerate(power.argmax(axis=1)):
        peak = int(np.abs(sources[i, :, t]).argmax())
        how = ", solved by the classical updates" if result["classical_fallback"][i] else ""
        print(f"sample {i}: peak source {peak} at time index {t}, "
              f"{1e9 * sources[i, peak, t]:.4g} nA m ({solver}{how})")
    if args.out:
        np.save(args.out, sources)


if __name__ == "__main__":
    main()
