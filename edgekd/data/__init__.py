"""Datasets held in memory as normalized float tensors, with fast batching and augmentation."""
from edgekd.data.datasets import DATASETS, ImageDataset, load_dataset
from edgekd.data.loader import augment_batch, iterate_batches

__all__ = ["DATASETS", "ImageDataset", "load_dataset", "iterate_batches", "augment_batch"]
