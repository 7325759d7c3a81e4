"""Datasets: labelled uint8 NHWC images loaded from IDX, TFDS, .npz or image folders,
or memory-mapped from .npy files (`npy`, streamed).

TensorFlow is imported only when a "tfds:" source is loaded.
"""

from vpntk_jax.data.dataset import ImageDataset, check_images_and_labels, make_dataset
from vpntk_jax.data.transforms import resize_dataset, resize_images
from vpntk_jax.data.idx import read_idx, read_idx_pair
from vpntk_jax.data.loader import (ACCEPTED_FORMS, FASHION_MNIST_CLASSES, MNIST_CLASSES,
                                   default_dirs, load_dataset, load_test_source)

__all__ = [
    "ACCEPTED_FORMS",
    "FASHION_MNIST_CLASSES",
    "MNIST_CLASSES",
    "ImageDataset",
    "check_images_and_labels",
    "default_dirs",
    "load_dataset",
    "load_test_source",
    "make_dataset",
    "read_idx",
    "read_idx_pair",
    "resize_dataset",
    "resize_images",
]
