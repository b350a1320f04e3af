"""Storage: the only package that reads or writes the object store.

- :class:`ObjectStore`: atomic bytes/JSON on any fsspec URI (local folder, ``s3://``...),
  and conditional creates (exactly one of several writers creates a key).
- :class:`CheckpointStore`: verified safetensors checkpoints with JSON manifests.
- :class:`RunStore`: a SISA run's layout (manifest, committed states, data partitions,
  index, tombstones) and the transactions that change its data (ingest, deletion), with
  their journal, recovery and sweep.
- :mod:`raysisa.store.lease`: the writer lease, one writer per store, fenced at commit.
- :class:`RunState`: what one committed version of a run's data is made of.
"""

from raysisa.store.checkpoints import Checkpoint, CheckpointRef, CheckpointStore, tensors_sha256
from raysisa.store.keys import init_key, slice_keys
from raysisa.store.objects import ObjectStore
from raysisa.store.run import RunStore
from raysisa.store.state import ObjectRef, RunState

__all__ = [
    "Checkpoint",
    "CheckpointRef",
    "CheckpointStore",
    "ObjectRef",
    "ObjectStore",
    "RunState",
    "RunStore",
    "init_key",
    "slice_keys",
    "tensors_sha256",
]
