"""The latency predictor: per-layer work read from a model file, costed with a target's peaks or a calibration
fitted to micro-benchmarks measured on that target (used where a device cannot be reached)."""
from edgekd.profile.predict.calibrate import calibrate_target, micro_models
from edgekd.profile.predict.layers import Layer, model_layers
from edgekd.profile.predict.predictor import Calibration, Prediction, load_calibration, predict

__all__ = ["Calibration", "Layer", "Prediction", "calibrate_target", "load_calibration", "micro_models",
           "model_layers", "predict"]
