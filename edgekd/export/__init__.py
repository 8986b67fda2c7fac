"""Export passes, one module per file format: ONNX (dynamo exporter), TFLite (litert-torch), .pt2 (torch.export).

Each module registers its `edgekd.formats.Format`; `edgekd.formats.FORMATS.get(name).export(...)` or
`edgekd.formats.export_model(name, ...)` writes a file of any registered format.
"""
from edgekd.export.files import ExportedFile, describe_file
from edgekd.export.onnx import INT8_ORT_OPS, export_onnx, onnx_op_types
from edgekd.export.pt2 import export_pt2
from edgekd.export.tflite import export_tflite, tflite_tensor_quantization

__all__ = ["ExportedFile", "describe_file", "INT8_ORT_OPS", "export_onnx", "export_pt2", "export_tflite",
           "onnx_op_types", "tflite_tensor_quantization"]
