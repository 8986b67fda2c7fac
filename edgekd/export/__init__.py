"""Export passes, one per file format: ONNX (dynamo exporter) and TFLite (litert-torch), fp32 or int8 Q/DQ."""
from edgekd.export.files import ExportedFile, describe_file
from edgekd.export.onnx import INT8_ORT_OPS, export_onnx, onnx_op_types
from edgekd.export.tflite import export_tflite, tflite_tensor_quantization
from edgekd.registry import Registry

EXPORTERS: Registry = Registry("exporter")
EXPORTERS.register("onnx")(export_onnx)
EXPORTERS.register("tflite")(export_tflite)

__all__ = ["EXPORTERS", "ExportedFile", "describe_file", "INT8_ORT_OPS", "export_onnx", "export_tflite", "onnx_op_types",
           "tflite_tensor_quantization"]
