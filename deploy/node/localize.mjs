// Localise EEG with a self-contained unfolded_sbl ONNX file in Node.js: onnxruntime-node only.
//
//   npm install --ignore-scripts onnxruntime-node
//   node localize.mjs SOLVER.onnx RECORDING.npy [SOURCES.json]
//
// RECORDING.npy: EEG in volts, (channels, times) or (samples, channels, times), float32 or
// float64, channels in the order of the file's contract. The file references, scales,
// solves and returns sources in A m.
import { readFileSync, writeFileSync } from "node:fs";
import ort from "onnxruntime-node";

// A .npy file (little-endian float32/float64, C order) as {data, shape}.
export function readNpy(path) {
  const bytes = readFileSync(path);
  const headerLength = bytes.readUInt16LE(8);
  const header = bytes.subarray(10, 10 + headerLength).toString("latin1");
  const descr = /'descr':\s*'([^']+)'/.exec(header)[1];
  const shape = /'shape':\s*\(([^)]*)\)/.exec(header)[1].split(",")
    .map((s) => s.trim()).filter(Boolean).map(Number);
  if (/'fortran_order':\s*True/.test(header)) throw new Error("Fortran-ordered .npy");
  const body = bytes.subarray(10 + headerLength);
  const buffer = body.buffer.slice(body.byteOffset, body.byteOffset + body.byteLength);
  const data = descr === "<f4" ? new Float32Array(buffer)
    : descr === "<f8" ? new Float64Array(buffer) : null;
  if (data === null) throw new Error(`unsupported dtype ${descr}`);
  return { data, shape };
}

export async function localize(modelPath, eeg) {
  // memory-pattern planning costs seconds on a learned model's thousands of nodes
  const session = await ort.InferenceSession.create(modelPath, { enableMemPattern: false });
  const contract = JSON.parse(session.handler.metadata?.customMetadataMap?.["unfolded_sbl.contract"] ?? "{}");
  const shape = eeg.shape.length === 2 ? [1, ...eeg.shape] : eeg.shape;
  // volts in float64, as the contract states for every file
  const tensor = new ort.Tensor("float64", Float64Array.from(eeg.data), shape);
  const out = await session.run({ sensors: tensor });
  return { sources: out.sources, fallback: out.classical_fallback, contract };
}

async function main() {
  const [modelPath, recordingPath, outPath] = process.argv.slice(2);
  if (!modelPath || !recordingPath) {
    console.error("usage: node localize.mjs SOLVER.onnx RECORDING.npy [SOURCES.json]");
    process.exit(2);
  }
  const { sources } = await localize(modelPath, readNpy(recordingPath));
  const [n, m, t] = sources.dims;
  const values = sources.data;
  for (let i = 0; i < n; i++) {
    let bestTime = 0, bestPower = -1;
    for (let k = 0; k < t; k++) {
      let power = 0;
      for (let s = 0; s < m; s++) power += values[(i * m + s) * t + k] ** 2;
      if (power > bestPower) { bestPower = power; bestTime = k; }
    }
    let peak = 0;
    for (let s = 0; s < m; s++) {
      if (Math.abs(values[(i * m + s) * t + bestTime]) > Math.abs(values[(i * m + peak) * t + bestTime])) peak = s;
    }
    console.log(`sample ${i}: peak source ${peak} at time index ${bestTime}, ` +
      `${(1e9 * values[(i * m + peak) * t + bestTime]).toPrecision(4)} nA m`);
  }
  if (outPath) writeFileSync(outPath, JSON.stringify({ dims: sources.dims, data: Array.from(values) }));
}

if (import.meta.url === `file://${process.argv[1]}`) main();
