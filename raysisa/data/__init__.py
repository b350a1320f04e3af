"""Data: sources with stable sample ids, the SISA partition, and tensors for training."""

from raysisa.data.partition import Partition, plan_partition
from raysisa.data.samples import SAMPLE_SCHEMA, DatasetInfo, SourceData, decode_images, make_table
from raysisa.data.sources import list_sources, load_source, register_source
from raysisa.data.tensors import random_crop_flip, to_tensors
from raysisa.data import torchvision_sources as _torchvision_sources  # noqa: F401 - registers cifar10, cifar100, svhn

__all__ = [
    "SAMPLE_SCHEMA",
    "DatasetInfo",
    "Partition",
    "SourceData",
    "decode_images",
    "list_sources",
    "load_source",
    "make_table",
    "plan_partition",
    "random_crop_flip",
    "register_source",
    "to_tensors",
]
