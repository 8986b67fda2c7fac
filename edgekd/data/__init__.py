"""Datasets held in memory as normalized float tensors, with fast batching and augmentation."""
from edgekd.data.datasets import DATASETS, ImageDataset, RawImages
from edgekd.data.loader import augment_batch, iterate_batches
from edgekd.data.prepare import (NORMALIZATION_PRESETS, carve_validation, check_labels, dataset_from_config,
                                 load_dataset, stratified_subset, validation_indices)

__all__ = ["DATASETS", "NORMALIZATION_PRESETS", "ImageDataset", "RawImages", "augment_batch", "carve_validation",
           "check_labels", "dataset_from_config", "iterate_batches", "load_dataset", "stratified_subset",
           "validation_indices"]
