"""Quantization: schemes per runtime, QAT fused with KD (qat_finetune), PT2E parts, PTQ calibration, sensitivity."""
from edgekd.quant.finetune import qat_finetune, qat_freeze_steps
from edgekd.quant.ptq import (CALIBRATION_METHODS, CalibrationRecipe, calibration_batches, calibration_indices,
                              load_calibration_recipe, quantize_ptq, select_calibration)
from edgekd.quant.qat import (convert_qat, eval_mode, is_quantized, load_qat_state, load_quantized, prepare_qat,
                              qat_state_dict, save_quantized, set_qat_phase, train_mode)
from edgekd.quant.schemes import SCHEMES, Scheme, detect_cpu_vnni, get_scheme, scheme_for_runtimes
from edgekd.quant.sensitivity import (LayerSensitivity, layer_sensitivity, mixed_precision_fallback, model_bytes,
                                      quantizable_layers)

__all__ = ["CALIBRATION_METHODS", "CalibrationRecipe", "LayerSensitivity", "SCHEMES", "Scheme",
           "calibration_batches", "calibration_indices", "convert_qat", "detect_cpu_vnni", "eval_mode",
           "get_scheme", "is_quantized", "layer_sensitivity", "load_calibration_recipe", "load_qat_state",
           "load_quantized", "mixed_precision_fallback", "model_bytes", "prepare_qat", "qat_finetune",
           "qat_freeze_steps", "qat_state_dict", "quantizable_layers", "quantize_ptq", "save_quantized", "scheme_for_runtimes", "select_calibration",
           "set_qat_phase", "train_mode"]
