"""Latency where the model will run: targets, local/adb/ssh runners, statistics, predictor, int8-vs-fp32 verdicts."""
from edgekd.profile.adb import parse_benchmark_model_output, profile_android
from edgekd.profile.calibrate import calibrate_target, micro_models
from edgekd.profile.layers import Layer, model_layers
from edgekd.profile.local import profile_file, profile_files, profile_metrics
from edgekd.profile.predictor import Calibration, Prediction, predict
from edgekd.profile.result import LatencyResult, detect_precision
from edgekd.profile.ssh import parse_trtexec_output, profile_ssh
from edgekd.profile.stats import LatencyStats, StopRule, summarize
from edgekd.profile.targets import (Peak, Target, format_target, format_targets_table, list_targets,
                                    load_target)
from edgekd.profile.verdict import Verdict, compare, verdict_text, verdicts

__all__ = ["Calibration", "LatencyResult", "LatencyStats", "Layer", "Peak", "Prediction", "StopRule", "Target",
           "Verdict", "calibrate_target", "compare", "detect_precision", "format_target", "format_targets_table",
           "list_targets", "load_target", "micro_models", "model_layers", "parse_benchmark_model_output",
           "parse_trtexec_output", "predict", "profile_android", "profile_file", "profile_files", "profile_metrics",
           "profile_ssh", "summarize", "verdict_text", "verdicts"]
