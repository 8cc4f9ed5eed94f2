"""The shipped models: found by name, verified against their cards, predicting."""

import json
import shutil

import numpy as np
import pytest
import torch

import unfolded_sbl as us
from unfolded_sbl import pretrained, zoo
from unfolded_sbl.regime import SPACING_TOLERANCE

SHIPPED = ("deep-cb-joint", "deep-cb-joint-classical-noise", "deep-cb-known",
           "deep-attn-cb-joint", "deep-graph-cb-joint", "deep-cb-joint-focal")


def test_all_presets_are_shipped():
    assert set(SHIPPED) <= set(us.list_pretrained())


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_model_loads_and_predicts(name, fwd, data):
    card = zoo.model_card(name)
    assert card["training"]["forward"] == "biosemi64-ico3"
    assert set(card["files"]) == {f"{name}.pt", f"{name}.onnx"}
    kwargs = {} if card["estimator_params"]["learn_noise"] else {"noise_var": data.noise_var[:2]}
    torch_est = us.load_pretrained(name, forward=fwd)
    onnx_est = us.load_pretrained(name, forward=fwd, backend="onnx")
    ref = torch_est.predict(data.sensors[:2], **kwargs)
    out = onnx_est.predict(data.sensors[:2], **kwargs)
    assert ref.shape == (2, 1284, 100) and np.all(np.isfinite(ref))
    # the shipped graph runs its products in float32 (the N x N factorisation in float64
    # inside it): the torch model loaded in float32 is the same computation, up to the
    # order of float32 sums; the float64 torch default differs by float32 round-off
    assert card["dtype"] == "float64" and torch_est.dtype == "float64"
    assert card["onnx_dtype"] == zoo.ONNX_DTYPE == "float32"
    assert onnx_est.solver_dtype_ == np.float32
    ref32 = us.load_pretrained(name, forward=fwd, dtype="float32").predict(
        data.sensors[:2], **kwargs)
    assert np.linalg.norm(out - ref32) / np.linalg.norm(ref32) < 1e-4
    assert np.linalg.norm(out - ref) / np.linalg.norm(ref) < 1e-3
    stages = [stage["name"] for stage in card["training"]["stages"]]
    # the graph model starts from Deep CB and inherits its two stages
    # Deep CB went through a second stage 2 with a low-SNR component (``--continue --low-snr``)
    expected = {"deep-graph-cb-joint": ["deep-cb-joint: paper", "deep-cb-joint: robust",
                                        "robust"],
                "deep-cb-joint": ["paper", "robust", "robust-2"],
                # made from deep-cb-joint without training (zoo.derive)
                "deep-cb-joint-classical-noise": ["deep-cb-joint: paper", "deep-cb-joint: robust",
                                                  "deep-cb-joint: robust-2",
                                                  "noise corrections removed"],
                # deep-cb-joint trained further on the paper's simulator alone (zoo.adopt)
                "deep-cb-joint-focal": ["deep-cb-joint: paper", "deep-cb-joint: robust",
                                        "deep-cb-joint: robust-2", "paper (focal)"],
                }.get(name, ["paper", "robust"])
    assert stages == expected


def test_source_spread_is_the_fraction_of_sources_an_estimate_covers():
    from unfolded_sbl.regime import source_spread

    one = np.zeros((1, 100))
    one[0, 3] = 2.0
    rows = np.vstack([one, np.ones((1, 100)), np.zeros((1, 100)), 1e-300 * np.ones((1, 100))])
    assert np.allclose(source_spread(rows), [0.01, 1.0, 0.0, 1.0])
    half = np.r_[np.ones(50), np.zeros(50)][None]
    assert np.allclose(source_spread(np.vstack([half, 1e6 * half])), 0.5)


@pytest.fixture(scope="module")
def focal_and_dense(fwd):
    """4 focal samples (the paper's simulator) and 4 of 30-40 patches below 0 dB."""
    focal = us.simulate(fwd, 4, random_state=21).sensors
    dense = us.simulate(fwd, 4, random_state=22, n_patches=(30, 40), snr_db=(-5.0, 0.0))
    return np.concatenate([focal, dense.sensors])


@pytest.mark.parametrize("backend", ["torch", "onnx"])
def test_estimates_denser_than_the_ceiling_are_solved_classically(fwd, focal_and_dense, backend):
    """The density check re-solves exactly the samples whose learned estimate spreads
    over more than ``density_ceiling`` of the sources, by ClassicalCB at the same depth;
    the other samples keep the network's estimate."""
    from unfolded_sbl.regime import source_spread

    X = focal_and_dense
    free = us.load_pretrained("deep-cb-joint", forward=fwd, backend=backend,
                              density_ceiling=None)
    learned = free.predict(X)
    spread = source_spread(free.source_var_)
    ceiling = zoo.DENSITY_CEILINGS["deep-cb-joint"]
    est = us.load_pretrained("deep-cb-joint", forward=fwd, backend=backend)
    assert est.density_ceiling == ceiling
    out = est.predict(X)
    dense = spread > ceiling
    assert dense[4:].all() and not dense[:4].any()  # the fixture's split
    np.testing.assert_array_equal(est.classical_fallback_, dense)
    classical = us.ClassicalCB(fwd, n_iter=est.n_layers if backend == "torch" else 25).fit()
    reference = classical.predict(X[dense])
    # float64 both; the file inverts with onnxruntime's Inverse, torch by Cholesky
    tol = 1e-8 if backend == "torch" else 1e-7
    assert np.abs(out[dense] - reference).max() <= tol * np.abs(reference).max()
    np.testing.assert_allclose(out[~dense], learned[~dense], rtol=0, atol=1e-12)
    np.testing.assert_allclose(est.source_var_[dense], classical.source_var_, rtol=tol,
                               atol=tol * classical.source_var_.max())
    # without the regime check nothing falls back
    unchecked = us.load_pretrained("deep-cb-joint", forward=fwd, backend=backend,
                                   regime_check=False)
    np.testing.assert_allclose(unchecked.predict(X[4:]), learned[4:], rtol=0, atol=1e-12)
    assert not unchecked.classical_fallback_.any()
    # one time sample per row: (n, N) in, (n, M) out, the same choice
    assert est.predict(X[:, :, 0]).shape == (8, fwd.n_sources)


@pytest.mark.parametrize("backend", ["torch", "onnx"])
def test_both_checks_together_on_one_time_sample_per_row(fwd, focal_and_dense, backend,
                                                          monkeypatch):
    """(n, N) data with samples outside the trained regime and dense ones: every
    sample is solved once, by the solver its checks choose."""
    est = us.load_pretrained("deep-cb-joint", forward=fwd, backend=backend,
                             density_ceiling=1e-3)  # every estimate is denser
    X = focal_and_dense[:4, :, 0]
    outside = np.array([True, False, True, False])
    monkeypatch.setattr(type(est), "_outside_regime", lambda self, Y: outside.copy())
    out = est.predict(X)
    classical = us.ClassicalCB(fwd, n_iter=est.n_layers if backend == "torch" else 25).fit()
    reference = classical.predict(X)
    assert out.shape == (4, fwd.n_sources) and est.classical_fallback_.all()
    # one time sample: sparse to round-off (ClassicalCB prunes to exact zeros)
    assert np.abs(out - reference).max() <= 1e-6 * np.abs(reference).max()


@pytest.mark.parametrize("value", [0, 1.5, -0.1, "0.1", True])
def test_density_ceiling_is_checked(value):
    with pytest.raises(ValueError, match="density_ceiling must be None or a number in"):
        us.UnfoldedSBLRegressor(max_epochs=0, density_ceiling=value).fit_simulated()
    with pytest.raises(ValueError, match="density_ceiling must be None or a number in"):
        us.OnnxSBLRegressor(zoo.pretrained_path("deep-cb-joint", "onnx"),
                            density_ceiling=value).fit()


@pytest.mark.parametrize("name", SHIPPED + ("deep-graph-cb-joint-ico4",))
def test_onnx_files_record_the_density_ceiling_they_ship_with(name):
    """``OnnxSBLRegressor(path)`` as the API shows it runs the same checks as
    ``load_pretrained(name, backend="onnx")``: the file records the ceiling."""
    path = zoo.pretrained_path(name, "onnx")
    fwd = zoo.default_forward(name)
    est = us.OnnxSBLRegressor(path, forward=fwd).fit()
    assert est.density_ceiling == "auto"
    assert est.density_ceiling_ == zoo.DENSITY_CEILINGS.get(name)
    assert us.load_pretrained(name, backend="onnx").density_ceiling_ == est.density_ceiling_


def test_an_explicit_density_ceiling_wins_over_the_files():
    """The wrapper's setting, the same for every file (one file checked: each setting
    opens a session)."""
    path = zoo.pretrained_path("deep-cb-joint", "onnx")
    fwd = zoo.default_forward("deep-cb-joint")
    assert us.OnnxSBLRegressor(path, forward=fwd, density_ceiling=None).fit(
        ).density_ceiling_ is None
    assert us.OnnxSBLRegressor(path, forward=fwd, density_ceiling=0.3).fit(
        ).density_ceiling_ == 0.3


def test_onnx_auto_density_ceiling_checks_the_dense_samples(fwd, focal_and_dense):
    est = us.OnnxSBLRegressor(zoo.pretrained_path("deep-cb-joint", "onnx"), forward=fwd).fit()
    ref = us.load_pretrained("deep-cb-joint", forward=fwd, backend="onnx")
    np.testing.assert_array_equal(est.predict(focal_and_dense), ref.predict(focal_and_dense))
    np.testing.assert_array_equal(est.classical_fallback_, ref.classical_fallback_)
    assert est.classical_fallback_[4:].all()  # the dense half of the fixture


def test_export_records_the_estimators_density_ceiling(tmp_path):
    net = us.UnfoldedSBLRegressor(forward=zoo.TRAIN_FORWARD, n_layers=2, max_epochs=0,
                                  density_ceiling=0.25).fit_simulated()
    est = us.OnnxSBLRegressor(us.export_onnx(net, tmp_path / "net.onnx"),
                              forward=zoo.TRAIN_FORWARD).fit()
    assert est.metadata_["density_ceiling"] == 0.25 and est.density_ceiling_ == 0.25


@pytest.mark.parametrize("recorded, expected", [("inf", None), (5.0, ValueError)])
def test_onnx_auto_density_ceiling_of_files_without_one_or_damaged(tmp_path, recorded,
                                                                   expected):
    """A file without a density ceiling runs without one; a recorded value outside
    (0, 1] is refused, naming the file."""
    import json

    import onnx

    model = onnx.load(str(zoo.pretrained_path("deep-cb-known", "onnx")))
    prop = next(p for p in model.metadata_props if p.key == "unfolded_sbl.contract")
    contract = json.loads(prop.value)
    contract["settings"]["density_ceiling"] = recorded
    prop.value = json.dumps(contract)
    path = tmp_path / "model.onnx"
    onnx.save(model, str(path))
    est = us.OnnxSBLRegressor(path, forward=zoo.TRAIN_FORWARD)
    if expected is ValueError:
        with pytest.raises(ValueError, match="density_ceiling recorded in .*model.onnx must be"):
            est.fit()
    else:
        assert est.fit().density_ceiling_ is expected


def test_denser_models_have_no_density_ceiling():
    """The ico4 model's estimates spread wider by design."""
    assert all(zoo.DENSITY_CEILINGS.get(name) is None for name in zoo.DENSER)
    assert set(zoo.DENSITY_CEILINGS) == set(SHIPPED)


def test_deep_cb_runs_on_another_cap_and_source_space():
    fwd = us.load_forward("things63-ico4")
    data = us.simulate(fwd, 2, random_state=0, n_times=30)
    est = us.load_pretrained("deep-cb-joint", forward=fwd)
    assert est.predict(data.sensors).shape == (2, 5124, 30)
    onnx_est = us.OnnxSBLRegressor(zoo.MODEL_DIR / "deep-cb-joint.onnx", forward=fwd).fit()
    assert onnx_est.predict(data.sensors).shape == (2, 5124, 30)


def test_exported_models_folder_points_at_the_package_files():
    from pathlib import Path

    repo = Path(__file__).resolve().parents[1]
    if not (repo / "exported_models").exists():
        pytest.skip("not running from a source checkout")
    assert (repo / "exported_models" / "deep-cb-joint.onnx").exists()


def test_modified_file_fails_sha_check(tmp_path, monkeypatch):
    for f in zoo.MODEL_DIR.glob("deep-cb-joint.*"):
        shutil.copy(f, tmp_path / f.name)
    with open(tmp_path / "deep-cb-joint.pt", "r+b") as fid:
        fid.seek(200)
        fid.write(b"\x00\x01\x02")
    monkeypatch.setattr(pretrained, "MODEL_DIR", tmp_path)
    with pytest.raises(ValueError, match="does not match the sha256"):
        us.load_pretrained("deep-cb-joint")
    (tmp_path / "deep-cb-joint.onnx").unlink()
    with pytest.raises(ValueError, match="missing"):
        us.load_pretrained("deep-cb-joint", backend="onnx")


def test_unknown_name_and_backend():
    with pytest.raises(ValueError, match="unknown pretrained model 'nope'"):
        us.load_pretrained("nope")
    with pytest.raises(ValueError, match="backend"):
        us.load_pretrained("deep-cb-joint", backend="tensorflow")


@pytest.mark.parametrize("name", SHIPPED)
def test_card_records_validation_against_classical(name):
    card = zoo.model_card(name)
    rows = card["validation"]["metrics"]
    assert name in rows and any(k.startswith("ClassicalCB") for k in rows)
    json.dumps(card)  # plain JSON
    for key in ("seed", "versions", "estimator_params"):
        assert key in card


@pytest.mark.parametrize("backend", ["torch", "onnx"])
def test_other_source_spacing_is_solved_classically(backend):
    """Trained at ico3 (~10 mm): at ico4 (~5 mm) the corrections are outside their
    regime and the model is the classical solver at the same depth."""
    from unfolded_sbl.forward import source_spacing

    fwd = us.load_forward("things63-ico4")
    data = us.simulate(fwd, 2, random_state=0, n_times=20)
    est = us.load_pretrained("deep-cb-joint", forward=fwd, backend=backend)
    assert est.train_spacing_ == pytest.approx(source_spacing(us.load_forward()))
    out = est.predict(data.sensors)
    assert est.classical_fallback_.all()
    ref = us.ClassicalCB(fwd).fit().predict(data.sensors)
    assert np.linalg.norm(out - ref) / np.linalg.norm(ref) < 1e-5
    forced = us.load_pretrained("deep-cb-joint", forward=fwd, regime_check=False)
    assert np.linalg.norm(forced.predict(data.sensors) - ref) > 1e-3 * np.linalg.norm(ref)
    # another cap at the training resolution keeps the corrections
    ico3 = us.load_pretrained("deep-cb-joint", forward="things63-ico3", backend=backend)
    ico3.predict(us.simulate("things63-ico3", 2, random_state=0, n_times=20).sensors)
    assert not ico3.classical_fallback_.any()


def test_low_snr_stage_adds_a_third_component_and_continuation_keeps_stages():
    two, three = zoo.robust_simulator_params(), zoo.robust_simulator_params(low_snr=True)
    assert len(two) == 2 and three[:2] == two
    assert three[2]["snr_db"] == zoo.LOW_SNR["snr_db"] and three[2]["head_models"] == "ensemble"
    four = zoo.robust_simulator_params(low_snr=True, dense=True)
    assert four[:3] == three and four[3] == {**zoo.DENSE, "head_models": "ensemble"}
    assert len(zoo._mixture_labels(True, True)) == 4
    wide = zoo.robust_simulator_params(low_snr=True, wide=True)
    assert wide[:3] == three and wide[3] == {**zoo.WIDE, "head_models": "ensemble"}
    assert "6-15 mm" in zoo._mixture_labels(False, False, wide=True)[-1]
    shipped = zoo.MODEL_DIR / "deep-cb-joint.pt"
    names = [st["name"] for st in zoo.model_card("deep-cb-joint")["training"]["stages"]]
    # fine-tuned again: stage 2 is replaced; continued: every earlier stage is kept
    assert [st["name"] for st in zoo._previous_stages("deep-cb-joint", shipped)] == ["paper"]
    assert [st["name"] for st in zoo._previous_stages("deep-cb-joint", shipped,
                                                      continue_training=True)] == names


def test_a_model_file_elsewhere_brings_the_stages_of_the_card_beside_it(tmp_path):
    """``--init PATH``: the weights went through every stage its card lists."""
    import shutil

    shutil.copy(zoo.MODEL_DIR / "deep-cb-joint.pt", tmp_path / "deep-cb-joint.pt")
    assert zoo._previous_stages("deep-cb-joint", tmp_path / "deep-cb-joint.pt") == []
    shutil.copy(zoo.MODEL_DIR / "deep-cb-joint.json", tmp_path / "deep-cb-joint.json")
    stages = zoo.model_card("deep-cb-joint")["training"]["stages"]
    assert zoo._previous_stages("deep-cb-joint", tmp_path / "deep-cb-joint.pt") == stages


@pytest.mark.parametrize("backend", ["torch", "onnx"])
def test_denser_model_acts_on_its_source_spacing_and_falls_back_elsewhere(backend):
    """``deep-graph-cb-joint-ico4`` was trained at ico3 on 2x wider patches for a
    source space about 2x denser: its corrections act at ico4 and the classical
    updates solve at ico3."""
    name = "deep-graph-cb-joint-ico4"
    start, factor = zoo.DENSER[name]
    card = zoo.model_card(name)
    assert card["training"]["forward"] == "biosemi64-ico3"
    assert card["validation"]["forward"] == "biosemi64-ico4-perturbed"
    *trained, calibration = card["training"]["stages"]
    assert trained[-1]["simulator"]["mixture"][0].startswith(
        f"paper defaults with {factor:g}x wider patches")
    # its last correction is scaled by the grid's scale with the lowest worst part
    assert calibration["name"] == zoo.CALIBRATION_STAGE
    assert calibration["scales"] == list(zoo.LAST_CORRECTION_SCALES)
    worst = [max(parts) for parts in calibration["ratio_parts"]]
    assert calibration["scale"] == calibration["scales"][int(np.argmin(worst))]
    assert zoo.suits(name, "things63-ico4") and not zoo.suits(name, "things63-ico3")
    assert zoo.suits(start, "things63-ico3") and not zoo.suits(start, "things63-ico4")
    ico4 = us.load_forward("things63-ico4")
    data = us.simulate(ico4, 2, random_state=0, n_times=20)
    est = us.load_pretrained(name, forward=ico4, backend=backend)
    out = est.predict(data.sensors)
    assert not est.classical_fallback_.any() and np.all(np.isfinite(out))
    ref = us.ClassicalCB(ico4).fit().predict(data.sensors)
    assert np.linalg.norm(out - ref) > 1e-3 * np.linalg.norm(ref)
    if backend == "onnx":  # the same network as torch in the graph's precision
        torch_out = us.load_pretrained(name, forward=ico4, dtype=zoo.ONNX_DTYPE).predict(
            data.sensors)
        assert np.linalg.norm(out - torch_out) / np.linalg.norm(torch_out) < 1e-4
    ico3 = us.load_forward("things63-ico3")
    data = us.simulate(ico3, 2, random_state=0, n_times=20)
    est = us.load_pretrained(name, forward=ico3, backend=backend)
    out = est.predict(data.sensors)
    assert est.classical_fallback_.all()
    ref = us.ClassicalCB(ico3).fit().predict(data.sensors)
    assert np.linalg.norm(out - ref) / np.linalg.norm(ref) < 1e-5


def _rescaled(forward, factor):
    """``forward`` with its source positions scaled: the same mesh with its spacing
    times ``factor`` (the spacing checks read the positions only)."""
    return us.ForwardModel(forward.lead_field, forward.positions * factor, forward.ch_names,
                           forward.adjacency)


@pytest.mark.parametrize("backend", ["torch", "onnx"])
def test_denser_model_reaches_source_spaces_up_to_twice_finer(backend):
    """The ico4 model's corrections act down to its training spacing / DENSER_REACH
    (ico5, 2.8 mm, measured: README): they act at 3 mm, not at 2.2 mm, and the ico3
    models' corrections act at neither."""
    from unfolded_sbl.forward import source_spacing

    name = "deep-graph-cb-joint-ico4"
    card = zoo.model_card(name)
    finest, coarsest = card["spacing_range_m"]
    trained = card["train_spacing_m"]
    assert finest == pytest.approx(trained / zoo.DENSER_REACH)
    assert coarsest == pytest.approx(trained * SPACING_TOLERANCE)
    ico4 = us.load_forward("things63-ico4")
    for spacing, acts in ((3.0e-3, True), (2.2e-3, False)):
        fwd = _rescaled(ico4, spacing / source_spacing(ico4))
        assert zoo.suits(name, fwd) == acts and not zoo.suits("deep-cb-joint", fwd)
        assert (name in us.list_pretrained(fwd)) is acts
        est = us.load_pretrained(name, forward=fwd, backend=backend)
        assert est.spacing_range_ == pytest.approx([finest, coarsest])
        est.predict(us.simulate(ico4, 2, random_state=0, n_times=20).sensors)
        assert bool(est.classical_fallback_.all()) != acts


def test_save_load_and_export_keep_the_spacing_range(tmp_path):
    from unfolded_sbl.export import export_onnx

    net = us.UnfoldedSBLRegressor(forward=zoo.TRAIN_FORWARD, n_layers=2, max_epochs=0
                                  ).fit_simulated()
    assert net.spacing_range_ is None  # within SPACING_TOLERANCE of its training spacing
    net.spacing_range_ = [1e-3, 2e-2]
    net.save(tmp_path / "net.pt")
    assert us.UnfoldedSBLRegressor.load(tmp_path / "net.pt").spacing_range_ == [1e-3, 2e-2]
    export_onnx(net, tmp_path / "net.onnx")
    ort = us.OnnxSBLRegressor(tmp_path / "net.onnx", forward=zoo.TRAIN_FORWARD).fit()
    assert ort.spacing_range_ == [1e-3, 2e-2]
    for damaged in ([2e-2, 1e-3], [0.0, 1e-3], [1e-3], "wide", [np.nan, 1.0]):
        net.spacing_range_ = damaged
        net.save(tmp_path / "damaged.pt")
        with pytest.raises(ValueError, match="spacing_range recorded in .*damaged.pt"):
            us.UnfoldedSBLRegressor.load(tmp_path / "damaged.pt")
    export_onnx(net, tmp_path / "damaged.onnx")
    with pytest.raises(ValueError, match="spacing_range recorded in .*damaged.onnx"):
        us.OnnxSBLRegressor(tmp_path / "damaged.onnx", forward=zoo.TRAIN_FORWARD).fit()


@pytest.mark.parametrize("continue_training", [False, True])
def test_denser_training_runs_its_stages_in_order_and_continuation_only_the_missing_ones(
        monkeypatch, tmp_path, continue_training):
    """From the starting model every stage of the recipe runs, stage ``i`` with seed
    ``random_state + i``; continued from the shipped file, only the stages its card does
    not list yet (none: the shipped card lists them all)."""
    name = "deep-graph-cb-joint-ico4"
    start, factor = zoo.DENSER[name]
    runs = []

    def fake_fine_tune(est, label, stage, mixture, checkpoint, random_state, verbose):
        runs.append((label, stage["learning_rate"], len(stage["simulator_params"]),
                     random_state))
        return {"name": label}

    def fake_calibration(est, simulator_params):
        runs.append(("calibration", len(simulator_params)))
        return {"name": zoo.CALIBRATION_STAGE}

    monkeypatch.setattr(zoo, "_fine_tune", fake_fine_tune)
    monkeypatch.setattr(zoo, "calibrate_last_correction", fake_calibration)
    monkeypatch.setattr(zoo, "_save_model", lambda est, n, out: None)
    monkeypatch.setattr(zoo, "write_card", lambda n, out, stages, *a: {"stages": stages})
    card = zoo.train_denser(name, out_dir=tmp_path, random_state=5,
                            continue_training=continue_training)
    recipe = zoo._denser_stages(factor)
    shipped = [st["name"] for st in zoo.model_card(name)["training"]["stages"]]
    # the recipe's stages, then the calibration of the last correction
    assert shipped[-1] == zoo.CALIBRATION_STAGE
    assert [label for label, _, _ in recipe] == shipped[-len(recipe) - 1:-1]
    if continue_training:
        assert runs == [] and [st["name"] for st in card["stages"]] == shipped
    else:
        assert runs == [(label, stage["learning_rate"], len(stage["simulator_params"]), 5 + i)
                        for i, (label, stage, _) in enumerate(recipe)] + [("calibration", 2)]
        names = [st["name"] for st in card["stages"]]
        assert names[-len(recipe) - 1:] == [label for label, _, _ in recipe] + [
            zoo.CALIBRATION_STAGE]
        assert all(n.startswith(f"{start}: ") for n in names[:-len(recipe) - 1])


def _tiny_net(forward, random_state=0, correction="mlp"):
    """An untrained 4-layer network whose last source correction has random output
    weights (so that scaling it changes the estimate)."""
    net = us.UnfoldedSBLRegressor(forward=forward, correction=correction, n_layers=4,
                                  max_epochs=0, random_state=random_state).fit_simulated()
    out = net.network_.source_corrections[net.n_layers - 2].out
    gen = torch.Generator().manual_seed(random_state)
    with torch.no_grad():
        out.weight.copy_(torch.randn(out.weight.shape, generator=gen, dtype=out.weight.dtype))
        out.bias.fill_(-0.5)
    return net


def test_scaling_the_last_correction_scales_its_output_only(fwd):
    data = us.simulate(fwd, 3, random_state=1, n_times=20)
    net = _tiny_net(fwd)
    before = net.predict_trajectory(data.sensors)
    last = net.n_layers - 2  # the last layer has no correction (n_layers - 1 of them)
    assert np.abs(before[last]["source_correction"]).max() > 0.1
    zoo.scale_last_correction(net, 0.0)
    after = net.predict_trajectory(data.sensors)
    assert np.array_equal(after[last]["source_correction"], np.zeros_like(
        before[last]["source_correction"]))
    for k in range(last):  # the layers before it are untouched
        np.testing.assert_array_equal(after[k]["sources"], before[k]["sources"])
    with pytest.raises(ValueError, match="scale_last_correction needs"):
        zoo.scale_last_correction(us.UnfoldedSBLRegressor(
            forward=fwd, correction="attention", n_layers=3, max_epochs=0).fit_simulated(), 0.5)


def test_calibration_keeps_the_scale_with_the_lowest_worst_part(fwd, monkeypatch):
    monkeypatch.setattr(zoo, "CALIBRATION_CHUNK", 3)  # several chunks per part
    net = _tiny_net(fwd)
    start = net.network_.source_corrections[net.n_layers - 2].out.weight.detach().clone()
    parts = [{}, {"snr_db": (0.0, 5.0), "head_models": "ensemble"}]
    record = zoo.calibrate_last_correction(net, parts, scales=(0.0, 0.5, 1.0), n_samples=4)
    worst = [max(r) for r in record["ratio_parts"]]
    assert len(record["ratio_parts"]) == 3 and all(len(r) == 2 for r in record["ratio_parts"])
    assert record["scale"] == (0.0, 0.5, 1.0)[int(np.argmin(worst))]
    weight = net.network_.source_corrections[net.n_layers - 2].out.weight.detach()
    torch.testing.assert_close(weight, start * record["scale"])
    assert net.regime_check  # restored
    # an untrained network (all corrections zero): every scale ties, the trained one stays
    untrained = us.UnfoldedSBLRegressor(forward=fwd, n_layers=4, max_epochs=0).fit_simulated()
    record = zoo.calibrate_last_correction(untrained, parts[:1], scales=(0.0, 1.0), n_samples=3)
    assert record["ratio_parts"][0] == record["ratio_parts"][1] and record["scale"] == 1.0


def test_default_forward_of_a_denser_model_is_its_source_space():
    assert zoo.default_forward("deep-graph-cb-joint-ico4") == zoo.DENSER_FORWARD
    assert zoo.default_forward("deep-cb-joint") == zoo.TRAIN_FORWARD
    assert us.list_pretrained("things63-ico4") == ["deep-graph-cb-joint-ico4"]
    assert set(us.list_pretrained("things63-ico3")) == set(us.list_pretrained()) - {
        "deep-graph-cb-joint-ico4"}
    params = zoo.denser_simulator_params(2.0)
    assert params[0]["spread"] == pytest.approx((0.004, 0.008))
    assert params[0]["patch_distance"] == "mesh" and params[1]["head_models"] == "ensemble"


def test_float32_models_solve_their_fallback_samples_in_float64(fwd):
    """Samples the regime check leaves to the classical updates (here: 50-60 dB, beyond
    the trained regime) run in float64 in a float32 model too, as in the shipped
    float32 graphs: a float32 solver drifted by 4e-2 of the estimate there."""
    data = us.simulate(fwd, 3, random_state=3, snr_db=(50, 60), n_times=40)
    ref = us.load_pretrained("deep-cb-joint", forward=fwd).predict(data.sensors)
    net = us.load_pretrained("deep-cb-joint", forward=fwd, dtype="float32")
    out = net.predict(data.sensors)
    assert net.classical_fallback_.all() and net.torch_dtype_ == torch.float32
    graph = us.load_pretrained("deep-cb-joint", forward=fwd, backend="onnx")
    for other in (ref, graph.predict(data.sensors)):
        assert np.linalg.norm(out - other) / np.linalg.norm(other) < 1e-5
    # the trajectory of a fallback sample comes back in the model's dtype, complete
    layers = net.predict_trajectory(data.sensors[:1])
    assert len(layers) == net.n_layers and np.all(np.isfinite(layers[-1]["sources"]))


@pytest.mark.parametrize("n_times, classical", [(1, True), (3, True), (4, False)])
def test_windows_too_short_for_corrections_are_solved_classically_in_float64(
        fwd, n_times, classical):
    """A window of at most TRAINED_N_TIMES[0] samples gets no corrections, so the
    regime check hands it to the classical solver in float64, in the float32 graph and
    a float32 torch model too: their own float32 iterations drifted by 11-21 % of the
    estimate at T = 1.  From 4 samples on, the network (fading corrections) runs."""
    from unfolded_sbl.network import TRAINED_N_TIMES

    assert TRAINED_N_TIMES[0] == 3
    X = us.simulate(fwd, 3, random_state=4, n_times=n_times).sensors
    ref = us.ClassicalCB(fwd).fit().predict(X)
    for est in (us.load_pretrained("deep-cb-joint", forward=fwd, backend="onnx"),
                us.load_pretrained("deep-cb-joint", forward=fwd, dtype="float32"),
                us.load_pretrained("deep-cb-joint", forward=fwd)):
        out = est.predict(X)
        assert bool(est.classical_fallback_.all()) is classical
        if classical:
            assert np.linalg.norm(out - ref) / np.linalg.norm(ref) < 1e-6


@pytest.mark.parametrize("name", SHIPPED + ("deep-graph-cb-joint-ico4",))
def test_model_files_record_the_density_ceiling_they_ship_with(name):
    """``UnfoldedSBLRegressor.load`` of a shipped ``.pt`` runs the same checks as
    ``load_pretrained``: the file records the ceiling (``density_ceiling="auto"``)."""
    path = zoo.pretrained_path(name, "pt")
    assert us.UnfoldedSBLRegressor.load(path).density_ceiling == zoo.DENSITY_CEILINGS.get(name)
    assert us.UnfoldedSBLRegressor.load(path, density_ceiling=None).density_ceiling is None


def test_save_and_load_keep_the_density_ceiling(tmp_path):
    net = us.UnfoldedSBLRegressor(forward=zoo.TRAIN_FORWARD, n_layers=2, max_epochs=0,
                                  density_ceiling=0.25).fit_simulated()
    net.save(tmp_path / "net.pt")
    assert us.UnfoldedSBLRegressor.load(tmp_path / "net.pt").density_ceiling == 0.25
    zoo._save_model(net, "deep-cb-joint", tmp_path)  # the zoo writes its table's value
    loaded = us.UnfoldedSBLRegressor.load(tmp_path / "deep-cb-joint.pt")
    assert loaded.density_ceiling == zoo.DENSITY_CEILINGS["deep-cb-joint"]


@pytest.mark.parametrize("recorded, expected", [("absent", None), (5.0, ValueError)])
def test_auto_density_ceiling_of_older_or_damaged_model_files(tmp_path, recorded, expected):
    blob = torch.load(zoo.pretrained_path("deep-cb-known", "pt"), weights_only=True)
    if recorded == "absent":
        del blob["density_ceiling"]
    else:
        blob["density_ceiling"] = recorded
    torch.save(blob, tmp_path / "model.pt")
    if expected is ValueError:
        with pytest.raises(ValueError, match="density_ceiling must be None or a number in"):
            us.UnfoldedSBLRegressor.load(tmp_path / "model.pt")
    else:
        assert us.UnfoldedSBLRegressor.load(tmp_path / "model.pt").density_ceiling is None


def test_a_model_that_solves_classically_names_the_models_that_would_not(caplog):
    """At ico4 the ico3 models solve classically; loading one says which shipped model's
    corrections act there."""
    import logging

    with caplog.at_level(logging.WARNING, logger="unfolded_sbl"):
        us.load_pretrained("deep-cb-joint", forward="things63-ico4")
    assert ("deep-cb-joint's corrections do not act on this source space; the shipped "
            "models whose corrections do: deep-graph-cb-joint-ico4") in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="unfolded_sbl"):
        us.load_pretrained("deep-cb-joint", forward="things63-ico3")
        us.load_pretrained("deep-cb-joint", forward="things63-ico4", regime_check=False)
    assert "corrections do not act" not in caplog.text
