"""Verification of exported files: logit parity and accuracy in their own runtime, per the verify stage."""
from edgekd.verify.files import INT8_MAX_ACCURACY_GAP, INT8_MIN_TOP1_AGREEMENT, verify_files
from edgekd.verify.parity import (FP32_MAX_ABS_DIFF, FP32_RTOL, allowed_diff, compare_logits, file_accuracy,
                                  file_logits, parity, reference_logits)

__all__ = ["FP32_MAX_ABS_DIFF", "FP32_RTOL", "INT8_MAX_ACCURACY_GAP", "INT8_MIN_TOP1_AGREEMENT", "allowed_diff",
           "compare_logits", "file_accuracy", "file_logits", "parity", "reference_logits", "verify_files"]
