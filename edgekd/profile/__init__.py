"""Latency where the model will run: targets, runners per target kind (local, adb, ssh), statistics, the
predictor (edgekd.profile.predict) and int8-vs-fp32 verdicts."""
from edgekd.profile.predict import Calibration, Layer, Prediction, calibrate_target, micro_models, model_layers, predict
from edgekd.profile.result import LatencyResult, detect_precision
from edgekd.profile.runners import Job, RUNNERS, Runner, profile_files, register_runner, runner_for
from edgekd.profile.runners.adb import parse_benchmark_model_output, profile_android
from edgekd.profile.runners.local import profile_file
from edgekd.profile.runners.ssh import parse_trtexec_output, profile_ssh
from edgekd.profile.stage import profile_metrics
from edgekd.profile.stats import LatencyStats, StopRule, summarize
from edgekd.profile.targets import (Peak, Target, format_target, format_targets_table, list_targets,
                                    load_target)
from edgekd.profile.verdict import Verdict, compare, verdict_text, verdicts

__all__ = ["Calibration", "Job", "LatencyResult", "LatencyStats", "Layer", "Peak", "Prediction", "RUNNERS", "Runner",
           "StopRule", "Target", "Verdict", "calibrate_target", "compare", "detect_precision", "format_target",
           "format_targets_table", "list_targets", "load_target", "micro_models", "model_layers",
           "parse_benchmark_model_output", "parse_trtexec_output", "predict", "profile_android", "profile_file",
           "profile_files", "profile_metrics", "profile_ssh", "register_runner", "runner_for", "summarize",
           "verdict_text", "verdicts"]
