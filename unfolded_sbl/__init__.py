"""Unfolded sparse Bayesian learning for EEG source imaging.

Classical Champagne (convex-bounding updates, joint noise learning), its
unfolded network with learned corrections, template forward models, a
simulator and source-imaging metrics.
"""

__version__ = "0.1.0"

from . import realtime  # noqa: E402  (mne-lsl is imported when a stream is used)
from .end_to_end import EndToEndRegressor  # noqa: E402
from .estimators import SLORETA, ClassicalCB  # noqa: E402
from .export import export_onnx  # noqa: E402
from .forward import ForwardModel, list_forwards, load_forward  # noqa: E402
from .localize import peak_report, read_recording  # noqa: E402
from .metrics import emd, f1, localization_error, rmse  # noqa: E402
from .mne_io import apply  # noqa: E402
from .onnx_runtime import OnnxSBLRegressor  # noqa: E402
from .pretrained import list_pretrained, load_pretrained, pretrained_path  # noqa: E402
from .scoring import SCORERS, emd_scorer, f1_scorer, le_scorer, rmse_scorer  # noqa: E402
from .simulate import SimulatedData, Simulator, simulate, simulate_to_file  # noqa: E402
from .skl2onnx_support import register_converters  # noqa: E402
from .templates import forward_for_montage  # noqa: E402
from .unfolded import UnfoldedSBLRegressor  # noqa: E402
from .viz import plot_source_maps  # noqa: E402

__all__ = [
    "ClassicalCB", "SLORETA", "ForwardModel", "list_forwards", "load_forward", "emd", "f1",
    "localization_error", "rmse", "SCORERS", "emd_scorer", "f1_scorer", "le_scorer",
    "rmse_scorer", "UnfoldedSBLRegressor", "EndToEndRegressor", "export_onnx",
    "OnnxSBLRegressor", "list_pretrained", "load_pretrained", "pretrained_path", "apply",
    "SimulatedData", "Simulator", "simulate",
    "simulate_to_file", "forward_for_montage", "plot_source_maps", "peak_report",
    "read_recording", "register_converters", "realtime",
]
