"""The gating benchmark's type-II cost, whitened misfit and gate search."""

import numpy as np
from scipy.stats import multivariate_normal

from benchmarks.studies.gating import (
    REFERENCE,
    best_gate,
    gated,
    ratio,
    type2_cost,
    whitened_misfit,
)


def test_type2_cost_is_the_negative_log_evidence_up_to_constants():
    rng = np.random.default_rng(0)
    lead_field = rng.normal(size=(5, 12))
    source_var = rng.uniform(0.1, 2.0, size=(2, 12))
    noise_var = rng.uniform(0.1, 1.0, size=(2, 5))
    Y = rng.normal(size=(2, 5, 30))
    data_cov = np.einsum("bnt,bmt->bnm", Y, Y) / Y.shape[-1]
    cost = type2_cost(lead_field, source_var, noise_var, data_cov, referenced=False)
    referenced = type2_cost(lead_field, source_var, noise_var, data_cov)
    # an orthonormal basis of the average-reference subspace
    basis = np.linalg.svd(np.eye(5) - 1 / 5)[0][:, :4]
    for b in range(2):
        model_cov = lead_field @ np.diag(source_var[b]) @ lead_field.T + np.diag(noise_var[b])
        log_lik = multivariate_normal(np.zeros(5), model_cov).logpdf(Y[b].T).sum()
        # -2/T log p(Y) = cost + N log(2 pi)
        assert np.isclose(cost[b] + 5 * np.log(2 * np.pi), -2 * log_lik / Y.shape[-1])
        # referenced: the same for the data's coordinates in that subspace (any basis)
        log_lik = multivariate_normal(np.zeros(4), basis.T @ model_cov @ basis).logpdf(
            (basis.T @ Y[b]).T).sum()
        assert np.isclose(referenced[b] + 4 * np.log(2 * np.pi), -2 * log_lik / Y.shape[-1])


def _row(expert, shipped, observable):
    return {REFERENCE: {"error": np.ones(len(expert))},
            "focal expert": {"error": np.asarray(expert, float)},
            "deep-cb-joint": {"error": np.asarray(shipped, float)},
            "obs": np.asarray(observable, float)}


def test_the_gate_takes_the_expert_only_where_it_stays_below_one():
    # focal: the expert wins where obs is low; wide: the expert loses where obs is high
    rows = {"nominal template": _row([0.5, 0.6], [0.9, 0.9], [0.1, 0.2]),
            "perturbed template": _row([0.7, 0.7], [0.95, 0.95], [0.1, 0.3]),
            "wide": _row([1.5, 1.5], [0.99, 0.99], [0.8, 0.9])}
    score, threshold, below, cells = best_gate(rows, lambda r: r["obs"])
    assert below and 0.3 <= threshold < 0.8
    assert cells["nominal template"] == ratio(rows["nominal template"], "focal expert")
    assert cells["wide"] == ratio(rows["wide"], "deep-cb-joint")
    assert gated(rows["wide"], np.array([True, True])) == 1.5


def test_no_gate_when_the_observable_cannot_separate():
    rows = {"nominal template": _row([0.5, 0.5], [0.9, 0.9], [0.1, 0.2]),
            "perturbed template": _row([0.7, 0.7], [0.95, 0.95], [0.1, 0.2]),
            "wide": _row([1.5, 1.5], [0.99, 0.99], [0.1, 0.2])}
    score, threshold, below, cells = best_gate(rows, lambda r: r["obs"])
    # only "the expert nowhere" is feasible: the shipped model everywhere
    assert cells == {k: ratio(r, "deep-cb-joint") for k, r in rows.items()}


def test_a_condition_the_shipped_model_already_loses_does_not_forbid_every_gate():
    rows = {"nominal template": _row([0.5, 0.5], [0.9, 0.9], [0.1, 0.2]),
            "perturbed template": _row([0.7, 0.7], [0.95, 0.95], [0.1, 0.2]),
            "widest": _row([1.5, 1.5], [1.01, 1.01], [0.8, 0.9])}
    score, threshold, below, cells = best_gate(rows, lambda r: r["obs"])
    assert cells["nominal template"] == 0.5 and cells["widest"] == 1.01


def _referenced_problem(n_times, seed=0):
    rng = np.random.default_rng(seed)
    lead_field = rng.normal(size=(6, 15))
    lead_field -= lead_field.mean(0)
    sources = rng.normal(size=(2, 15, n_times))
    noise_var = rng.uniform(0.2, 3.0, size=(2, 6))
    noise = rng.normal(size=(2, 6, n_times)) * np.sqrt(noise_var)[..., None]
    clean = np.einsum("cs,bst->bct", lead_field, sources)
    return lead_field, sources, clean, noise, noise_var


def test_whitened_misfit_of_the_true_sources_is_one():
    lead_field, sources, clean, noise, noise_var = _referenced_problem(20_000)
    # unreferenced: the residual is the noise itself
    assert np.allclose(whitened_misfit(lead_field, sources, clean + noise, noise_var,
                                       referenced=False), 1.0, atol=0.03)
    # average-referenced data, as the templates' recordings are
    sensors = clean + noise - noise.mean(1, keepdims=True)
    assert np.allclose(whitened_misfit(lead_field, sources, sensors, noise_var), 1.0, atol=0.03)
    assert np.allclose(whitened_misfit(lead_field, sources, clean, noise_var), 0.0)


def test_whitened_misfit_is_the_pseudo_inverse_quadratic_form():
    lead_field, sources, clean, noise, noise_var = _referenced_problem(7, seed=1)
    sensors = clean + noise - noise.mean(1, keepdims=True)
    estimate = 0.5 * sources
    misfit = whitened_misfit(lead_field, estimate, sensors, noise_var)
    centre = np.eye(6) - 1 / 6
    for b in range(2):
        residual = sensors[b] - lead_field @ estimate[b]
        form = np.linalg.pinv(centre @ np.diag(noise_var[b]) @ centre)
        assert np.isclose(misfit[b], np.trace(residual.T @ form @ residual) / (5 * 7))
    # in units of the noise: twice the noise variance halves it
    assert np.allclose(whitened_misfit(lead_field, estimate, sensors, 2 * noise_var),
                       misfit / 2)
