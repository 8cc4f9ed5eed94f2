"""Self-contained ONNX files of the classical solvers, and the deployment examples that
run them without this package."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import unfolded_sbl as us

ort = pytest.importorskip("onnxruntime")
ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
MODEL = DEPLOY / "classical-cb-biosemi64-ico3.onnx"
LEARNED = DEPLOY / "deep-cb-joint-biosemi64-ico3.onnx"
SAMPLE = DEPLOY / "sample-evoked.npy"


def _run(path, feeds):
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(None, feeds)))


def _relative(a, b):
    return np.linalg.norm(a - b) / np.linalg.norm(b)


@pytest.mark.parametrize("noise", ["learn", "known"])
@pytest.mark.parametrize("embed", [False, True])
def test_classicalcb_file_takes_volts_and_returns_a_m(small_fwd, tmp_path, noise, embed):
    data = us.simulate(small_fwd, 4, random_state=0, n_times=30)
    est = us.ClassicalCB(small_fwd, noise=noise, n_iter=10).fit()
    kwargs = {"noise_var": data.noise_var} if noise == "known" else {}
    path = us.export_onnx(est, tmp_path / "cb.onnx", embed_forward=embed)
    feeds = {"sensors": data.sensors + 3e-5}  # an offset: the file references the data
    if not embed:
        feeds["lead_field"] = small_fwd.lead_field
    if noise == "known":
        feeds["noise_var_in"] = data.noise_var
    out = _run(path, feeds)
    reference = est.predict(data.sensors, **kwargs)
    assert _relative(out["sources"], reference) < 1e-6
    assert _relative(out["source_var"], est.source_var_) < 1e-6
    assert _relative(out["noise_var"], est.noise_var_) < 1e-6
    assert out["classical_fallback"].dtype == bool and not out["classical_fallback"].any()


@pytest.mark.parametrize("output", ["standardized", "current"])
def test_sloreta_file_matches_the_estimator(small_fwd, tmp_path, output):
    data = us.simulate(small_fwd, 3, random_state=1, n_times=20)
    est = us.SLORETA(small_fwd, output=output).fit()
    out = _run(us.export_onnx(est, tmp_path / "s.onnx", embed_forward=True),
               {"sensors": data.sensors})
    assert _relative(out["sources"], est.predict(data.sensors)) < 1e-6


def test_file_contract_is_readable_without_the_package(small_fwd, tmp_path):
    est = us.ClassicalCB(small_fwd, n_iter=3).fit()
    path = us.export_onnx(est, tmp_path / "cb.onnx", embed_forward=True)
    session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    contract = json.loads(session.get_modelmeta().custom_metadata_map["unfolded_sbl.contract"])
    assert [i.name for i in session.get_inputs()] == ["sensors"]
    assert contract["inputs"]["sensors"]["units"].startswith("V, any reference")
    assert contract["outputs"]["sources"]["units"] == "A m"
    assert contract["forward"]["ch_names"] == small_fwd.ch_names
    assert contract["params"]["n_iter"] == 3 and contract["solver"] == "ClassicalCB"


def test_bad_input_through_the_file_alone(small_fwd, tmp_path):
    est = us.ClassicalCB(small_fwd, n_iter=5).fit()
    path = us.export_onnx(est, tmp_path / "cb.onnx", embed_forward=True)
    rng = np.random.default_rng(0)
    good = rng.normal(size=(2, 16, 20)) * 1e-5
    flat = good.copy()
    flat[:, 3] = 0.0
    holes = good.copy()
    holes[0, 3, 7], holes[1, 5, 0] = np.nan, np.inf
    for sensors in (flat, np.zeros((2, 16, 20)), good[:, :, :1], holes):
        out = _run(path, {"sensors": sensors})
        assert np.all(np.isfinite(out["sources"]))
    assert not np.any(_run(path, {"sensors": np.zeros((1, 16, 5))})["sources"])
    # a channel with a non-finite value counts as flat (zero) in that sample
    zeroed = good.copy()
    zeroed[0, 3], zeroed[1, 5] = 0.0, 0.0
    np.testing.assert_allclose(_run(path, {"sensors": holes})["sources"],
                               _run(path, {"sensors": zeroed})["sources"], rtol=1e-12)
    with pytest.raises(Exception, match="sensors"):
        _run(path, {"sensors": good[:, :10]})  # a wrong channel count names the input
    with pytest.raises(ValueError, match="tol=0"):
        us.export_onnx(us.ClassicalCB(small_fwd, tol=1e-3).fit(), tmp_path / "t.onnx")


def test_shipped_deployment_file_is_classicalcb_on_the_default_cap():
    """deploy/'s file (deploy/build.py) has one input and gives ClassicalCB's estimate."""
    eeg = np.load(SAMPLE)
    out = _run(MODEL, {"sensors": eeg[None].astype(np.float64)})
    reference = us.ClassicalCB(us.load_forward()).fit().predict(eeg[None].astype(np.float64))
    assert _relative(out["sources"], reference) < 1e-6


def _package_estimates():
    """The package's estimates of the sample recording: ClassicalCB and Deep CB."""
    eeg = np.load(SAMPLE)[None].astype(np.float64)
    fwd = us.load_forward()
    return {MODEL: us.ClassicalCB(fwd).fit().predict(eeg),
            LEARNED: us.load_pretrained("deep-cb-joint", forward=fwd).predict(eeg)}


def test_shipped_learned_file_is_deep_cb_with_its_checks_inside():
    """deploy/'s learned file: sensors in, the package's Deep CB estimate out, and
    noise-free data left to the classical updates by the file itself."""
    session = ort.InferenceSession(str(LEARNED), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["sensors"]
    fwd = us.load_forward()
    data = us.simulate(fwd, 3, random_state=5)
    X = data.sensors.copy()
    X[1] = fwd.lead_field @ data.sources[1]  # noise-free
    sources, _, _, fallback = session.run(None, {"sensors": X})
    net = us.load_pretrained("deep-cb-joint", forward=fwd)
    reference = net.predict(X)
    assert fallback.tolist() == [False, True, False] == net.classical_fallback_.tolist()
    assert _relative(sources, reference) < 1e-4  # a float32 solver against float64


@pytest.fixture(scope="module")
def small_python(tmp_path_factory):
    """A fresh virtual environment with onnxruntime and numpy alone (not torch, not this
    package)."""
    env = tmp_path_factory.mktemp("deploy") / "env"
    subprocess.run([sys.executable, "-m", "venv", str(env)], check=True)
    python = env / "bin" / "python"
    install = subprocess.run([str(python), "-m", "pip", "install", "-q", "onnxruntime",
                              "numpy"], capture_output=True, text=True, timeout=600)
    assert install.returncode == 0, install.stderr[-2000:]
    missing = subprocess.run([str(python), "-c", "import unfolded_sbl"], capture_output=True)
    assert missing.returncode != 0  # the package is not there
    return python


RUN_EVERY_FILE = """
import sys, numpy as np, onnxruntime as ort
feeds = dict(np.load(sys.argv[2]))
options = ort.SessionOptions()
options.enable_mem_reuse = False
session = ort.InferenceSession(sys.argv[1], options, providers=["CPUExecutionProvider"])
names = [i.name for i in session.get_inputs()]
np.save(sys.argv[3], session.run(["sources"], {n: feeds[n] for n in names})[0])
"""


def test_every_shipped_file_runs_with_only_onnxruntime_and_numpy(small_python, tmp_path):
    """Each shipped model's file, fed volts, its template's lead field (and noise,
    neighbourhoods) in that environment, gives the package's estimate (5-30 dB)."""
    from unfolded_sbl import zoo
    from unfolded_sbl.forward import mesh_neighbourhoods

    script = tmp_path / "run.py"
    script.write_text(RUN_EVERY_FILE)
    for name in us.list_pretrained():
        fwd = us.load_forward(zoo.default_forward(name))
        data = us.simulate(fwd, 3, n_times=40, snr_db=(5.0, 30.0), random_state=3)
        index, weight, _ = mesh_neighbourhoods(fwd)
        feeds = {"sensors": data.sensors, "lead_field": fwd.lead_field,
                 "noise_var_in": data.noise_var, "neighbour_index": index,
                 "neighbour_weight": weight.astype(np.float64)}
        np.savez(tmp_path / "feeds.npz", **feeds)
        run = subprocess.run([str(small_python), str(script), str(us.pretrained_path(name,
                              "onnx")), str(tmp_path / "feeds.npz"), str(tmp_path / "out.npy")],
                             capture_output=True, text=True, timeout=300)
        assert run.returncode == 0, f"{name}: {run.stderr[-2000:]}"
        est = us.load_pretrained(name, forward=fwd, backend="onnx")
        kwargs = {} if est.learn_noise_ else {"noise_var": data.noise_var}
        reference = est.predict(data.sensors, **kwargs)
        assert _relative(np.load(tmp_path / "out.npy"), reference) < 1e-4, name


def test_python_example_runs_with_only_onnxruntime_and_numpy(small_python, tmp_path):
    """deploy/python/localize.py, in that environment, on both of deploy/'s files gets
    the package's numbers."""
    python = small_python
    for model, reference in _package_estimates().items():
        out = tmp_path / "sources.npy"
        run = subprocess.run([str(python), str(DEPLOY / "python" / "localize.py"), str(model),
                              str(SAMPLE), "--out", str(out)], capture_output=True, text=True,
                             timeout=300)
        assert run.returncode == 0, run.stderr[-2000:]
        assert _relative(np.load(out), reference) < 1e-4
        peak = int(np.abs(reference[0, :, (reference[0] ** 2).sum(0).argmax()]).argmax())
        assert f"peak source {peak}" in run.stdout


def _npm_install(npm, work, package):
    """``package`` installed from the npm registry into ``work`` (its binaries ship in the
    package: no install scripts), or the test skipped where the registry is out of reach."""
    work.mkdir()
    (work / "package.json").write_text('{"name": "deploy-test", "private": true}')
    install = subprocess.run([npm, "install", "--ignore-scripts", "--no-audit", "--no-fund",
                              package], cwd=work, capture_output=True, text=True, timeout=600)
    if install.returncode != 0:
        pytest.skip(f"{package} could not be installed: {install.stderr[-300:]}")
    return work


def test_node_example_matches_the_package(tmp_path):
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        pytest.skip("Node.js is not installed")
    work = _npm_install(npm, tmp_path / "node", "onnxruntime-node")
    shutil.copy(DEPLOY / "node" / "localize.mjs", work)
    for model, reference in _package_estimates().items():
        run = subprocess.run([node, "localize.mjs", str(model), str(SAMPLE), "out.json"],
                             cwd=work, capture_output=True, text=True, timeout=300)
        assert run.returncode == 0, run.stderr[-2000:]
        result = json.loads((work / "out.json").read_text())
        sources = np.asarray(result["data"]).reshape(result["dims"])
        assert _relative(sources, reference) < 1e-4


def _chromium():
    return shutil.which("chromium") or shutil.which("chromium-browser")


CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                  "--no-first-run", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync",
                  "--virtual-time-budget=60000"]


def test_browser_page_localises_in_the_browser_and_draws_a_map(tmp_path):
    """deploy/web/index.html with onnxruntime-web (wasm) in headless Chromium: the peak it
    prints is the package's, and the canvas holds a map."""
    import socket
    import time

    chromium, npm = _chromium(), shutil.which("npm")
    if chromium is None or npm is None:
        pytest.skip("headless Chromium or npm is not installed")
    work = _npm_install(npm, tmp_path / "npm", "onnxruntime-web")
    site = tmp_path / "site"
    (site / "web").mkdir(parents=True)
    shutil.copy(MODEL, site)
    shutil.copy(SAMPLE, site)
    shutil.copy(DEPLOY / "web" / "index.html", site / "web")
    dist = work / "node_modules" / "onnxruntime-web" / "dist"
    for runtime in [dist / "ort.min.js", *dist.glob("ort-wasm-simd-threaded.*")]:
        shutil.copy(runtime, site / "web")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = subprocess.Popen([sys.executable, "-m", "http.server", str(port), "--bind",
                               "127.0.0.1"], cwd=site, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    try:
        time.sleep(1.0)
        url = f"http://127.0.0.1:{port}/web/index.html"
        dom = subprocess.run([chromium, *CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'a'}",
                              "--dump-dom", url], capture_output=True, text=True, timeout=180)
        shot = tmp_path / "page.png"
        subprocess.run([chromium, *CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'b'}",
                        "--window-size=900,900", f"--screenshot={shot}", url],
                       capture_output=True, timeout=180)
    finally:
        server.terminate()
        server.wait(timeout=10)
    import re

    found = re.search(r"peak source (\d+) at time index (\d+), (\S+) nA m \(ClassicalCB",
                      dom.stdout)
    assert found, dom.stdout[-2000:]
    eeg = np.load(SAMPLE)[None].astype(np.float64)
    reference = us.ClassicalCB(us.load_forward()).fit().predict(eeg)[0]
    t = int((reference ** 2).sum(0).argmax())
    peak = int(np.abs(reference[:, t]).argmax())
    assert (int(found.group(1)), int(found.group(2))) == (peak, t)
    assert float(found.group(3)) == pytest.approx(1e9 * reference[peak, t], rel=1e-3)
    from matplotlib.image import imread

    canvas = imread(shot)[170:700, 40:500, :3]  # the map's canvas
    assert canvas.std() > 0.02 and (canvas[..., 0] > 0.9).sum() > 20  # sources drawn, hot ones
