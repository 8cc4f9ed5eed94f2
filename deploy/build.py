"""Write the deployment examples' files with the package (maintainers).

    python deploy/build.py

``classical-cb-biosemi64-ico3.onnx``: ClassicalCB (25 iterations, joint noise learning,
float64) for the embedded default head model, its lead field a constant of the file, so
that its one input is ``sensors`` in volts; ``deep-cb-joint-biosemi64-ico3.onnx``: the
shipped Deep CB the same way (its solver in float32, the regime check and the classical
fallback inside); ``sample-evoked.npy``: one simulated 64-channel recording (100 samples
at 100 Hz, volts) to run them on.
"""

from pathlib import Path

import numpy as np

import unfolded_sbl as us

HERE = Path(__file__).resolve().parent
MODEL = HERE / "classical-cb-biosemi64-ico3.onnx"
LEARNED = HERE / "deep-cb-joint-biosemi64-ico3.onnx"
SAMPLE = HERE / "sample-evoked.npy"


def main():
    fwd = us.load_forward()
    us.export_onnx(us.ClassicalCB(fwd).fit(), MODEL, embed_forward=True)
    us.export_onnx(us.load_pretrained("deep-cb-joint", forward=fwd, dtype="float32"),
                   LEARNED, embed_forward=True, name="deep-cb-joint")
    sample = us.simulate(fwd, 1, random_state=2024).sensors[0]
    np.save(SAMPLE, np.ascontiguousarray(sample, dtype=np.float32))  # C order for readers
    print(f"wrote {MODEL.name}, {LEARNED.name} and {SAMPLE.name}")


if __name__ == "__main__":
    main()
