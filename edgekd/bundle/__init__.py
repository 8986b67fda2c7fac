"""Bundles for mobile apps: TFLite/ONNX metadata, model card, manifest, safe archive handling."""
from edgekd.bundle.archive import BUNDLE_FORMAT, MANIFEST, ModelFile, app_layouts, make_bundle
from edgekd.bundle.card import ModelCard, card_json, card_markdown
from edgekd.bundle.from_run import archive_record, bundle_run, card_from_run, model_files
from edgekd.bundle.metadata import (Normalization, read_onnx_metadata, read_tflite_metadata, write_onnx_metadata,
                                    write_tflite_metadata)
from edgekd.bundle.safe_zip import ExtractLimits, safe_extract
from edgekd.bundle.verify import BundleReport, verify_bundle

__all__ = ["BUNDLE_FORMAT", "MANIFEST", "ModelFile", "app_layouts", "make_bundle", "ModelCard", "card_json",
           "card_markdown", "archive_record", "bundle_run", "card_from_run", "model_files", "Normalization",
           "read_onnx_metadata", "read_tflite_metadata", "write_onnx_metadata", "write_tflite_metadata",
           "ExtractLimits", "safe_extract", "BundleReport", "verify_bundle"]
