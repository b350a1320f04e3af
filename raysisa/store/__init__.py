"""Storage: the only package that reads or writes the object store.

- :class:`ObjectStore`: atomic bytes/JSON on any fsspec URI (local folder, ``s3://``...).
- :class:`CheckpointStore`: verified safetensors checkpoints with JSON manifests.
- :class:`RunStore`: a SISA run's layout (config, data partitions, index, tombstones).
"""

from raysisa.store.checkpoints import Checkpoint, CheckpointRef, CheckpointStore, tensors_sha256
from raysisa.store.keys import init_key, slice_keys
from raysisa.store.objects import ObjectStore
from raysisa.store.run import RunStore

__all__ = [
    "Checkpoint",
    "CheckpointRef",
    "CheckpointStore",
    "ObjectStore",
    "RunStore",
    "init_key",
    "slice_keys",
    "tensors_sha256",
]
