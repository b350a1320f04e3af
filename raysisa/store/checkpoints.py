"""Slice checkpoints: safetensors blobs plus JSON manifests, verified on every read.

Layout (one pair of objects per checkpoint)::

    checkpoints/shard=<k>/slice=<r>/<key>.safetensors   tensors: model/<name>, optim/<i>/<name>
    checkpoints/shard=<k>/slice=<r>/<key>.json          manifest: lineage, sha256, timings

Slice 0 holds a shard's initial weights. ``key`` is content-addressed
(:func:`raysisa.store.keys.slice_key`): it changes exactly when the samples a checkpoint
was trained on change. The blob is written before the manifest, so a manifest's presence
means the checkpoint is complete; the manifest carries the blob's sha256 and its own, so
truncation or bit rot is detected before anything is deserialised. Nothing is unpickled.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from raysisa.errors import CheckpointCorruptError, StoreNotFoundError
from raysisa.store.objects import ObjectStore

__all__ = ["CheckpointRef", "Checkpoint", "CheckpointStore", "tensors_sha256", "FORMAT_VERSION"]

FORMAT_VERSION = 1
PREFIX = "checkpoints"
_KEY_RE = re.compile(r"^([a-z_]+)/shard=(\d+)/slice=(\d+)/([0-9a-f]{64})\.json$")


@dataclass(frozen=True, order=True)
class CheckpointRef:
    """Address of one checkpoint; does no I/O."""

    shard: int
    slice: int
    key: str
    prefix: str = PREFIX  # "checkpoints" for SISA slices; "approx" for approximate overlays

    @property
    def base(self) -> str:
        return f"{self.prefix}/shard={self.shard}/slice={self.slice}/{self.key}"

    @property
    def blob(self) -> str:
        return self.base + ".safetensors"

    @property
    def manifest(self) -> str:
        return self.base + ".json"

    def short(self) -> str:
        return f"shard {self.shard} slice {self.slice} ({self.key[:12]})"


@dataclass(frozen=True)
class Checkpoint:
    ref: CheckpointRef
    tensors: dict[str, torch.Tensor]
    manifest: dict[str, Any]


def tensors_sha256(tensors: dict[str, torch.Tensor]) -> str:
    """sha256 over tensors in sorted-name order: name, dtype, shape and raw bytes."""
    digest = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach().cpu().contiguous()
        digest.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return digest.hexdigest()


def _canonical(obj: dict[str, Any]) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()


class CheckpointStore:
    """Reads, writes, lists and deletes checkpoints under one prefix of an :class:`ObjectStore`."""

    def __init__(self, store: ObjectStore, prefix: str = PREFIX) -> None:
        self.store = store
        self.prefix = prefix

    def put(self, ref: CheckpointRef, tensors: dict[str, torch.Tensor], manifest: dict[str, Any]) -> dict[str, Any]:
        """Write a checkpoint (blob first, then its manifest) and return the manifest."""
        plain = {name: t.detach().cpu().contiguous().clone() for name, t in tensors.items()}
        blob = st_save(plain)
        body = {
            **manifest,
            "format_version": FORMAT_VERSION,
            "shard": ref.shard,
            "slice": ref.slice,
            "key": ref.key,
            "blob_sha256": hashlib.sha256(blob).hexdigest(),
            "blob_bytes": len(blob),
        }
        body["manifest_sha256"] = hashlib.sha256(_canonical(body)).hexdigest()
        self.store.put_bytes(ref.blob, blob)
        self.store.put_bytes(ref.manifest, _canonical(body))
        return body

    def exists(self, ref: CheckpointRef) -> bool:
        return self.store.exists(ref.manifest)

    def manifest(self, ref: CheckpointRef) -> dict[str, Any]:
        """The verified manifest of ``ref``."""
        raw = self.store.get_bytes(ref.manifest)
        try:
            body = json.loads(raw)
            claimed = body.pop("manifest_sha256")
        except (ValueError, KeyError, AttributeError, TypeError):
            raise CheckpointCorruptError(
                f"checkpoint {ref.short()} is corrupt: manifest {self.store.uri(ref.manifest)} is unreadable "
                "(truncated or not JSON); it was not loaded"
            ) from None
        if hashlib.sha256(_canonical(body)).hexdigest() != claimed:
            raise CheckpointCorruptError(
                f"checkpoint {ref.short()} is corrupt: manifest {self.store.uri(ref.manifest)} fails its sha256; "
                "it was not loaded"
            )
        body["manifest_sha256"] = claimed
        return body

    def get(self, ref: CheckpointRef) -> Checkpoint:
        """Load and verify a checkpoint. Raises CheckpointCorruptError, never returns bad data."""
        manifest = self.manifest(ref)
        try:
            blob = self.store.get_bytes(ref.blob)
        except StoreNotFoundError:
            raise CheckpointCorruptError(
                f"checkpoint {ref.short()} is corrupt: its tensor file {self.store.uri(ref.blob)} is missing"
            ) from None
        if len(blob) != manifest["blob_bytes"] or hashlib.sha256(blob).hexdigest() != manifest["blob_sha256"]:
            raise CheckpointCorruptError(
                f"checkpoint {ref.short()} is corrupt: {self.store.uri(ref.blob)} has {len(blob)} bytes and a "
                f"sha256 that does not match its manifest ({manifest['blob_bytes']} bytes expected); it was not loaded. "
                "`raysisa train --store URI --verify` deletes corrupt checkpoints and rebuilds them"
            )
        try:
            tensors = st_load(blob)
        except SafetensorError as exc:  # pragma: no cover - sha256 matched, so only a writer bug gets here
            raise CheckpointCorruptError(f"checkpoint {ref.short()} cannot be decoded: {exc}") from exc
        return Checkpoint(ref=ref, tensors=tensors, manifest=manifest)

    def verify(self, ref: CheckpointRef) -> str | None:
        """``None`` if the checkpoint is intact, else the reason it is not."""
        try:
            self.get(ref)
        except CheckpointCorruptError as exc:
            return str(exc)
        return None

    def list(self, shard: int | None = None) -> list[CheckpointRef]:
        """All checkpoints with a manifest, sorted by (shard, slice, key)."""
        prefix = self.prefix if shard is None else f"{self.prefix}/shard={shard}"
        refs = []
        for key in self.store.list(prefix):
            match = _KEY_RE.match(key)
            if match and match[1] == self.prefix:
                refs.append(CheckpointRef(int(match[2]), int(match[3]), match[4], self.prefix))
        return sorted(refs)

    def orphans(self, shard: int | None = None) -> list[str]:
        """Object keys under ``checkpoints/`` that belong to no complete checkpoint."""
        prefix = self.prefix if shard is None else f"{self.prefix}/shard={shard}"
        manifests = {ref.base for ref in self.list(shard)}
        keys = self.store.list(prefix) + self.store.list_temporary(prefix)
        return [k for k in keys if k.split(".", 1)[0] not in manifests or ".tmp-" in k]

    def sweep(self, keep: set[CheckpointRef]) -> tuple[int, int]:
        """Delete every checkpoint not in ``keep`` and every leftover of an interrupted write
        (blobs without a manifest, temporary files), from one listing: manifests first (the
        checkpoint stops existing), then blobs. Returns (checkpoints, leftovers) deleted."""
        bases = {ref.base for ref in keep}
        doomed = [k for k in self.store.find(self.prefix) if ".tmp-" in k.rsplit("/", 1)[-1] or k.split(".", 1)[0] not in bases]
        manifests = [k for k in doomed if k.endswith(".json")]
        self.store.delete(manifests)
        self.store.delete([k for k in doomed if not k.endswith(".json")])
        return len(manifests), len(doomed) - len(manifests)

    def delete(self, refs: list[CheckpointRef]) -> None:
        """Delete checkpoints, manifests before blobs (a checkpoint stops existing with its
        manifest), in one request: a local store deletes in this order, and S3 completes a
        batched delete whoever sent it."""
        self.store.delete([r.manifest for r in refs] + [r.blob for r in refs])
