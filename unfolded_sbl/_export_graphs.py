"""The torch modules that :mod:`unfolded_sbl.export` traces: each one a whole solver,
volts in and A m out.

The reference and the scaling of every estimator's ``fit`` and ``predict``
(:mod:`unfolded_sbl._base`) run inside them in float64, the solver in its own
dtype, and learned graphs also compute the regime check's flags
(:mod:`unfolded_sbl.regime`) exactly as :class:`~unfolded_sbl.UnfoldedSBLRegressor`
does in Python.
"""

from __future__ import annotations

import torch
from torch import nn

from .network import TRAINED_N_TIMES
from .regime import REGIME_FLOOR_DB, regime_level_db, source_spread

WIDE = torch.float64


def finite_channels(sensors):
    """``sensors`` with every channel that holds a non-finite value in a sample set to
    zero in that sample, as a flat channel: plain onnxruntime callers get a finite
    answer, never NaN (the Python estimators refuse such input instead)."""
    good = torch.isfinite(sensors).all(dim=2, keepdim=True)
    return torch.where(good, sensors, torch.zeros_like(sensors))


def _physical_lead_field(lead_field, average_reference):
    """The referenced lead field scaled to ``trace(L L^T)`` = independent channels, and
    that scale: what every estimator's ``fit`` computes, inside the graph."""
    if average_reference:
        lead_field = lead_field - lead_field.mean(dim=0, keepdim=True)
    n_effective = lead_field.shape[0] - int(average_reference)
    scale = (lead_field.pow(2).sum() / n_effective).sqrt()
    return lead_field / scale, scale


class SolverGraph(nn.Module):
    """An unfolded network between physical units: sensors in volts (any reference)
    to sources in A m, source variances in (A m)^2 and noise variances in V^2, plus
    the per-sample ``classical_fallback`` flags.  Inputs and outputs are float64
    whatever the solver's dtype: the reference, the scaling, the regime check and
    the classical fallback see the data as users hold them.

    Parameters
    ----------
    network : UnfoldedChampagne
        Cast to ``dtype``; ClassicalCB's iterations are one without corrections.
    dtype : torch.dtype
        The solver's dtype (the corrections run in float32 whatever it is).
    average_reference : bool
    with_noise : bool
        Known noise: the graph takes ``noise_var_in`` (batch, channels) in V^2.
    lead_field : Tensor | None
        Embedded lead field (V / (A m)); None makes it an input.
    neighbours : (Tensor, Tensor) | None
        Embedded mesh neighbourhoods of graph corrections; None makes them inputs
        (graph corrections only).
    classical : bool
        Run the network without its corrections (the regime check's fallback).
    regime : dict | None
        Learned graphs: ``span`` (finest, coarsest spacing the corrections act on,
        metres, or None) and ``outside`` (the embedded source space lies outside
        it).  The graph then takes ``regime_check``, ``density_ceiling`` and,
        without an embedded lead field but with a span, ``source_spacing``, and
        flags the samples the classical updates must solve.
    """

    def __init__(self, network, dtype, average_reference, with_noise, lead_field=None,
                 neighbours=None, classical=False, regime=None):
        super().__init__()
        self.network, self.dtype = network, dtype
        self.average_reference = average_reference
        self.with_noise = with_noise
        self.classical = classical
        self.regime = regime
        self.embedded = lead_field is not None
        if self.embedded:
            self.register_buffer("lead_field", lead_field)
        self.takes_neighbours = network.needs_neighbours and not classical
        if self.takes_neighbours and neighbours is not None:
            self.register_buffer("neighbour_index", neighbours[0])
            self.register_buffer("neighbour_weight", neighbours[1])

    def input_names(self):
        """Names of the inputs :meth:`forward` takes, in order."""
        names = ["sensors"] + ([] if self.embedded else ["lead_field"])
        names += ["noise_var_in"] if self.with_noise else []
        if self.takes_neighbours and not self.embedded:
            names += ["neighbour_index", "neighbour_weight"]
        if self.regime is not None:
            names += ["regime_check", "density_ceiling"]
            if not self.embedded and self.regime["span"] is not None:
                names.append("source_spacing")
        return names

    def forward(self, sensors, *extra):
        extra = list(extra)
        lead_field = self.lead_field if self.embedded else extra.pop(0)
        noise_var = extra.pop(0) if self.with_noise else None
        neighbours = None
        dtype = self.dtype
        sensors = finite_channels(sensors)
        if self.takes_neighbours:
            neighbours = ((self.neighbour_index, self.neighbour_weight) if self.embedded
                          else (extra.pop(0), extra.pop(0)))
            neighbours = (neighbours[0], neighbours[1].to(dtype))
        Y = sensors.to(WIDE)
        if self.average_reference:
            Y = Y - Y.mean(dim=1, keepdim=True)
        power = Y.pow(2).mean(dim=(1, 2))
        nonzero = power > 0  # all-zero samples give zeros
        scale = torch.where(nonzero, power, torch.ones_like(power)).sqrt()
        normalised, lead_scale = _physical_lead_field(lead_field.to(WIDE), self.average_reference)
        noise = None if noise_var is None else (noise_var.to(WIDE) / scale[:, None] ** 2).to(dtype)
        out = self.network((Y / scale[:, None, None]).to(dtype), normalised.to(dtype), noise,
                           classical=self.classical, neighbours=neighbours)
        source_scale = scale / lead_scale * nonzero.to(WIDE)
        noise_scale = scale * nonzero.to(WIDE)
        outputs = (out["sources"].to(WIDE) * source_scale[:, None, None],
                   out["source_var"].to(WIDE) * source_scale[:, None] ** 2,
                   out["noise_var"].to(WIDE) * noise_scale[:, None] ** 2)
        flags = (torch.zeros_like(nonzero) if self.regime is None
                 else self._fallback(Y, out["source_var"], *extra))
        return outputs + (flags,)

    def _fallback(self, Y, source_var, regime_check, density_ceiling, source_spacing=None):
        """The regime check of :meth:`unfolded_sbl._network_base._NetworkEstimator.
        _with_regime_check`: samples outside the trained regime, and those whose
        learned estimate is too dense."""
        n_times = torch._shape_as_tensor(Y)[2].to(WIDE)
        outside = regime_level_db(Y, self.average_reference) < REGIME_FLOOR_DB
        outside = outside | (n_times <= TRAINED_N_TIMES[0])
        span = self.regime["span"]
        if self.regime["outside"]:
            outside = torch.ones_like(outside)
        elif source_spacing is not None:
            outside = outside | (source_spacing < span[0]) | (source_spacing > span[1])
        dense = (source_spread(source_var) > density_ceiling) & ~outside
        return (outside | dense) & regime_check


class SLORETAGraph(nn.Module):
    """sLORETA from volts: ``K = L^T (L L^T + alpha I)^-1`` on the scaled lead field,
    standardised by the resolution matrix's diagonal, or as currents in A m."""

    def __init__(self, alpha, output, average_reference, lead_field=None):
        super().__init__()
        self.alpha, self.output = float(alpha), output
        self.average_reference = average_reference
        self.embedded = lead_field is not None
        if self.embedded:
            self.register_buffer("lead_field", lead_field)

    def input_names(self):
        return ["sensors"] + ([] if self.embedded else ["lead_field"])

    def forward(self, sensors, *extra):
        lead_field = self.lead_field if self.embedded else extra[0]
        sensors = finite_channels(sensors)
        Y = sensors - sensors.mean(dim=1, keepdim=True) if self.average_reference else sensors
        L, lead_scale = _physical_lead_field(lead_field, self.average_reference)
        eye = torch.eye(L.shape[0], dtype=L.dtype)
        operator = L.T @ torch.linalg.inv(L @ L.T + self.alpha * eye)  # (M, N)
        if self.output == "standardized":
            resolution = (operator * L.T).sum(dim=1)
            weight = torch.where(resolution > 0, resolution.clamp(min=1e-300).rsqrt(),
                                 torch.zeros_like(resolution))
        else:
            weight = torch.ones(L.shape[1], dtype=L.dtype) / lead_scale
        return (operator * weight[:, None]) @ Y
