"""Problem families of the robustness property test (``tests/test_robustness_properties.py``)
and of its long random search (``python -m benchmarks.studies.property_search``): inputs that
recordings and simulations produce, from noise-free data to unmarked bad channels."""

import numpy as np

import unfolded_sbl as us

#: samples per problem
N_SAMPLES = 3
#: family -> (lowest, highest value, integer-valued, has ground truth): active sources;
#: SNR in dB (the lower end of a 5 dB bin); log10 of a bad channel's gain; share of flat
#: channels; time samples; data rank; log10 of the data's scale
FAMILIES = {"noise_free": (1, 5, True, True), "snr": (20, 55, False, True),
            "bad_channel": (2, 6, False, False), "flat": (0.1, 0.98, False, False),
            "n_times": (1, 1000, True, True), "rank": (1, 64, True, False),
            "scale": (-12, 3, False, True)}


def _simulated(fwd, seed, n_times=50, **kwargs):
    return us.simulate(fwd, N_SAMPLES, random_state=seed, n_times=n_times, **kwargs)


def make_problem(fwd, family, value, seed):
    """(X, true sources or None, noise_var) of one family member."""
    rng = np.random.default_rng(seed)
    n_channels, n_sources = fwd.lead_field.shape
    if family == "noise_free":
        n_times = 40
        sources = np.zeros((N_SAMPLES, n_sources, n_times))
        for i in range(N_SAMPLES):
            idx = rng.choice(n_sources, size=int(value), replace=False)
            sources[i, idx] = rng.normal(size=(len(idx), n_times)) * 1e-8
        X = np.einsum("cs,nst->nct", fwd.lead_field, sources)
        power = np.mean(X ** 2, axis=(1, 2))
        return X, sources, np.repeat(power[:, None] * 1e-10, n_channels, axis=1)
    if family == "snr":
        data = _simulated(fwd, seed, snr_db=(value, value + 5))
        return data.sensors, data.sources, data.noise_var
    if family == "scale":
        data = _simulated(fwd, seed)
        factor = 10.0 ** value
        return data.sensors * factor, data.sources * factor, data.noise_var * factor ** 2
    data = _simulated(fwd, seed, n_times=int(value) if family == "n_times" else 50)
    X, noise_var = data.sensors.copy(), data.noise_var.copy()
    if family == "n_times":
        return X, data.sources, noise_var
    if family == "bad_channel":
        channel = rng.integers(n_channels)
        X[:, channel] *= 10.0 ** value
        noise_var[:, channel] *= 10.0 ** (2 * value)
        return X, None, noise_var
    if family == "flat":
        for i in range(N_SAMPLES):
            flat = rng.choice(n_channels, size=max(1, int(value * n_channels)), replace=False)
            X[i, flat] = 0.0
        return X, None, noise_var
    if family == "rank":
        rank = int(value)
        X = (rng.normal(size=(N_SAMPLES, n_channels, rank))
             @ rng.normal(size=(N_SAMPLES, rank, 50))) * 1e-6
        return X, None, np.full((N_SAMPLES, n_channels), 1e-14)
    raise ValueError(family)
