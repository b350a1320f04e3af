"""Byte-level access to an object store through fsspec.

:class:`ObjectStore` is the only class in raysisa that talks to a filesystem. Paths given
to it are relative keys (``"checkpoints/shard=0/slice=1/<key>.json"``); it resolves them
under the run's root URI, writes atomically and maps foreign errors to :mod:`raysisa.errors`.
"""

from __future__ import annotations

import json
import logging
import os
import uuid
from typing import Any

import fsspec
from fsspec.implementations.local import LocalFileSystem

from raysisa.config import StoreConfig
from raysisa.errors import StoreError, StoreNotFoundError

__all__ = ["ObjectStore"]

log = logging.getLogger(__name__)


def _filesystem_options(config: StoreConfig) -> dict[str, Any]:
    options = dict(config.storage_options)
    if config.uri.startswith(("s3://", "s3a://")):
        # Other processes (shard actors) write to the same bucket: never trust a cached listing.
        options.setdefault("use_listings_cache", False)
        if config.endpoint_url:
            client_kwargs = dict(options.get("client_kwargs", {}))
            client_kwargs.setdefault("endpoint_url", config.endpoint_url)
            options["client_kwargs"] = client_kwargs
    elif config.endpoint_url:
        log.warning("endpoint_url=%s ignored: store %s is not s3://", config.endpoint_url, config.uri)
    return options


class ObjectStore:
    """Atomic reads and writes of small objects under one root URI.

    Args:
        config: the store location and options.

    Example:
        >>> store = ObjectStore(StoreConfig(uri="memory://doc-example"))
        >>> store.put_json("a/b.json", {"x": 1})
        >>> store.get_json("a/b.json")
        {'x': 1}
    """

    def __init__(self, config: StoreConfig) -> None:
        self.config = config
        try:
            self.fs, root = fsspec.core.url_to_fs(config.uri, **_filesystem_options(config))
        except (ImportError, ValueError, TypeError) as exc:
            raise StoreError(f"cannot open store {config.uri!r}: {exc}") from exc
        self.root = root.rstrip("/")
        self._local = isinstance(self.fs, LocalFileSystem)

    def __repr__(self) -> str:
        return f"ObjectStore({self.config.uri!r})"

    def __reduce__(self):
        return (ObjectStore, (self.config,))

    def path(self, key: str) -> str:
        """Absolute path of ``key`` on the filesystem."""
        return f"{self.root}/{key.lstrip('/')}" if key else self.root

    def uri(self, key: str) -> str:
        """A URI for messages and manifests (protocol included)."""
        return self.fs.unstrip_protocol(self.path(key))

    # -- writes ---------------------------------------------------------------------------
    def put_bytes(self, key: str, data: bytes) -> None:
        """Write ``data`` at ``key`` atomically: readers see the old object or the new one."""
        path = self.path(key)
        try:
            if self._local:
                # A rename within one folder is atomic; a crash leaves only a .tmp- file.
                os.makedirs(os.path.dirname(path), exist_ok=True)
                tmp = f"{path}.tmp-{uuid.uuid4().hex}"
                with open(tmp, "wb") as handle:
                    handle.write(data)
                    handle.flush()
                    os.fsync(handle.fileno())
                os.replace(tmp, path)
            else:
                # One PUT on an object store is atomic.
                self.fs.pipe_file(path, data)
        except OSError as exc:
            raise StoreError(f"cannot write {self.uri(key)}: {exc}") from exc

    def put_json(self, key: str, obj: Any) -> None:
        self.put_bytes(key, json.dumps(obj, indent=1, sort_keys=True).encode())

    def delete(self, keys: list[str] | str) -> None:
        """Delete objects; missing ones are ignored."""
        keys = [keys] if isinstance(keys, str) else list(keys)
        if not keys:
            return
        paths = [self.path(k) for k in keys]
        try:
            present = [p for p in paths if self.fs.exists(p)]
            if present:
                self.fs.rm(present)
        except OSError as exc:
            raise StoreError(f"cannot delete under {self.uri('')}: {exc}") from exc

    # -- reads ----------------------------------------------------------------------------
    def get_bytes(self, key: str) -> bytes:
        try:
            return self.fs.cat_file(self.path(key))
        except FileNotFoundError:
            raise StoreNotFoundError(f"{self.uri(key)} does not exist") from None
        except OSError as exc:
            raise StoreError(f"cannot read {self.uri(key)}: {exc}") from exc

    def get_json(self, key: str) -> Any:
        data = self.get_bytes(key)
        try:
            return json.loads(data)
        except ValueError as exc:
            raise StoreError(f"{self.uri(key)} is not valid JSON: {exc}") from None

    def exists(self, key: str) -> bool:
        try:
            return bool(self.fs.exists(self.path(key)))
        except OSError as exc:
            raise StoreError(f"cannot check {self.uri(key)}: {exc}") from exc

    def list(self, prefix: str = "") -> list[str]:
        """Every object key under ``prefix`` (recursively), sorted; temporary files excluded."""
        base = self.path(prefix)
        try:
            if not self.fs.exists(base):
                return []
            found = self.fs.find(base)
        except FileNotFoundError:
            return []
        except OSError as exc:
            raise StoreError(f"cannot list {self.uri(prefix)}: {exc}") from exc
        start = len(self.root) + 1
        keys = [p[start:] for p in found if p.startswith(self.root + "/")]
        return sorted(k for k in keys if ".tmp-" not in k.rsplit("/", 1)[-1])

    def list_temporary(self, prefix: str = "") -> list[str]:
        """Leftover temporary files of interrupted atomic writes."""
        base = self.path(prefix)
        if not self.fs.exists(base):
            return []
        start = len(self.root) + 1
        return sorted(p[start:] for p in self.fs.find(base) if ".tmp-" in p.rsplit("/", 1)[-1])
