"""Input checks shared by every module: clear errors naming argument and shape."""

from __future__ import annotations

import numbers

import numpy as np
import scipy.sparse as sp


def check_finite_array(value, name, ndim=None, shape_doc=None, dtype=np.float64):
    """Convert to a float array and check dimensionality and finiteness."""
    if sp.issparse(value):
        raise TypeError(f"{name} is a sparse matrix; a dense array is required")
    if np.iscomplexobj(value):
        raise ValueError(f"{name}: complex data not supported")
    if isinstance(value, (str, bytes)) or value is None:
        raise TypeError(f"{name} must be an array of numbers, got {type(value).__name__}")
    try:
        array = np.asarray(value, dtype=dtype)
    except (TypeError, ValueError) as err:
        raise TypeError(f"{name} must be an array of numbers: {err}") from None
    if ndim is not None and array.ndim not in np.atleast_1d(ndim):
        expected = f" {shape_doc}" if shape_doc else ""
        raise ValueError(f"{name} must be {ndim}-D{expected}, got shape {array.shape}")
    if not np.all(np.isfinite(array)):
        raise ValueError(f"{name} contains NaN or infinite values")
    return array


def check_positive_int(value, name, minimum=1):
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def check_optional_fraction(value, name):
    """None, or a number in (0, 1]."""
    if value is not None and (isinstance(value, bool) or not isinstance(value, numbers.Real)
                              or not 0 < value <= 1):
        raise ValueError(f"{name} must be None or a number in (0, 1], got {value!r}")
    return value


def check_spacing_range(value, name):
    """None, or a [finest, coarsest] pair of positive spacings in metres (a model
    file's ``spacing_range``)."""
    if value is None:
        return None
    try:
        finest, coarsest = (float(v) for v in value)
    except (TypeError, ValueError):
        finest = coarsest = np.nan
    if not (np.isfinite(finest) and np.isfinite(coarsest) and 0 < finest <= coarsest):
        raise ValueError(f"{name} must be None or a [finest, coarsest] pair of positive "
                         f"source spacings in metres, got {value!r}")
    return [finest, coarsest]


def check_range(value, name, low=0.0, high=np.inf, positive=False):
    """A number or a (low, high) interval inside [low, high]; returns a 2-tuple."""
    pair = (value, value) if isinstance(value, numbers.Real) else tuple(value)
    if len(pair) != 2 or not all(isinstance(v, numbers.Real) for v in pair):
        raise ValueError(f"{name} must be a number or a (low, high) pair, got {value!r}")
    lo, hi = float(pair[0]), float(pair[1])
    if not (low <= lo <= hi <= high) or (positive and lo <= 0):
        raise ValueError(f"{name} must satisfy {low} <= low <= high <= {high}"
                         f"{' and be positive' if positive else ''}, got {value!r}")
    return lo, hi


def check_sensor_data(X, n_channels, name="X"):
    """Sensor data as float64 (n_samples, n_channels, n_times); 2-D is one time each."""
    X = check_finite_array(X, name, ndim=(2, 3),
                           shape_doc="(n_samples, n_channels[, n_times])")
    if X.ndim == 2:
        if X.shape[1] != n_channels and X.shape[0] == n_channels:
            raise ValueError(
                f"{name} is 2-D with shape {X.shape}: 2-D input means (n_samples, "
                f"n_channels), one time point per sample, so this reads as {X.shape[1]} "
                f"channels. For one sample of {n_channels} channels x {X.shape[1]} times, "
                f"pass {name}[np.newaxis], of shape (1, {n_channels}, {X.shape[1]})")
        X = X[:, :, None]
    _check_sensor_shape(X.shape, n_channels, name)
    return X


def check_sensor_tensor(X, n_channels, name="X"):
    """Sensor data already in a torch tensor (e.g. a batch simulated on a GPU),
    checked like :func:`check_sensor_data` where it lies (3-D only)."""
    import torch

    if X.dim() != 3:
        raise ValueError(f"{name} must have shape (n_samples, {n_channels}, n_times), got "
                         f"{tuple(X.shape)}")
    _check_sensor_shape(tuple(X.shape), n_channels, name)
    if not bool(torch.isfinite(X).all()):
        raise ValueError(f"{name} contains NaN or infinite values")
    return X


def _check_sensor_shape(shape, n_channels, name):
    if shape[1] != n_channels:
        raise ValueError(f"{name} has {shape[1]} channels but the forward model has "
                         f"{n_channels}; expected shape (n_samples, {n_channels}, n_times)")
    if shape[0] < 1 or shape[2] < 1:
        raise ValueError(f"{name} must have at least one sample and one time point, "
                         f"got shape {shape}")


def check_noise_var(noise_var, shape, name="noise_var"):
    """Known per-sample noise variances: finite, positive, of ``shape``."""
    if noise_var is None:
        raise ValueError(f"this model uses known noise: pass {name} of shape {shape}")
    noise_var = check_finite_array(noise_var, name, ndim=2, shape_doc=str(shape))
    if noise_var.shape != tuple(shape):
        raise ValueError(f"{name} must have shape {tuple(shape)}, got {noise_var.shape}")
    if np.any(noise_var <= 0):
        raise ValueError(f"{name} must be positive")
    return noise_var


def check_device(device, name="device"):
    """A torch device that exists here: "cpu", "cuda" or "cuda:N".

    Raises a ValueError naming the device and what torch sees, rather than a
    CUDA error deep inside the first operation.
    """
    import torch

    if isinstance(device, torch.device):
        device = str(device)
    if not isinstance(device, str):
        raise TypeError(f"{name} must be a string such as 'cpu', 'cuda' or 'cuda:1', got "
                        f"{type(device).__name__}")
    try:
        parsed = torch.device(device)
    except RuntimeError:
        raise ValueError(f"{name}={device!r} is not a device: use 'cpu', 'cuda' or "
                         "'cuda:N'") from None
    if parsed.type == "cpu":
        return parsed
    if parsed.type != "cuda":
        raise ValueError(f"{name}={device!r}: only 'cpu' and 'cuda[:N]' are supported")
    if not torch.cuda.is_available():
        raise ValueError(f"{name}={device!r} was requested but torch sees no CUDA GPU here "
                         f"(torch {torch.__version__}, torch.cuda.is_available() is False): "
                         "use device='cpu'")
    count = torch.cuda.device_count()
    if parsed.index is not None and parsed.index >= count:
        raise ValueError(f"{name}={device!r}: torch sees {count} CUDA device(s), "
                         f"cuda:0..cuda:{count - 1}")
    return parsed
