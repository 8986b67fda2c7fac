"""Datasets: small arrays held in memory as normalized tensors, or image folders, manifests and tar shards streamed
from disk by worker processes (docs/data.md); both are read as `BatchSource`s."""
from edgekd.data.datasets import DATASETS, ImageDataset, RawImages
from edgekd.data.files import index_shards, read_manifest, scan_folder, write_shards
from edgekd.data.loader import augment_batch, iterate_batches
from edgekd.data.prepare import (NORMALIZATION_PRESETS, carve_validation, check_labels, dataset_from_config,
                                 load_dataset, stratified_subset, validation_indices)
from edgekd.data.source import Batch, BatchSource, TensorSource
from edgekd.data.stream import FileSource, ImageView, ShardSource
from edgekd.data.streaming import StreamingDataset, StreamOptions, load_streaming
from edgekd.data.transforms import ImageTransform

__all__ = ["DATASETS", "NORMALIZATION_PRESETS", "Batch", "BatchSource", "FileSource", "ImageDataset", "ImageTransform",
           "ImageView", "RawImages", "ShardSource", "StreamOptions", "StreamingDataset", "TensorSource",
           "augment_batch", "carve_validation", "check_labels", "dataset_from_config", "index_shards",
           "iterate_batches", "load_dataset", "load_streaming", "read_manifest", "scan_folder", "stratified_subset",
           "validation_indices", "write_shards"]
