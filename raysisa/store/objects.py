"""Byte-level access to an object store through fsspec.

:class:`ObjectStore` is the only class in raysisa that talks to a filesystem. Paths given
to it are relative keys (``"checkpoints/shard=0/slice=1/<key>.json"``); it resolves them
under the run's root URI, writes atomically and maps foreign errors to :mod:`raysisa.errors`.

Two kinds of write:

- :meth:`ObjectStore.put_bytes` overwrites atomically (readers see the old object or the
  new one);
- :meth:`ObjectStore.create_bytes` writes only if nothing is there yet, atomically with
  respect to other writers: an exclusive hard link locally, ``If-None-Match: *`` on S3.
  Leases, commits, journals, deletion requests and their events are written this way, so
  two processes can never both believe they created the same object.

A store that does not answer (connection refused, timeouts) raises
:class:`~raysisa.errors.StoreUnavailableError` after the S3 client's bounded retries
(3 attempts, 5 s connect timeout by default; ``storage_options.config_kwargs`` overrides).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
import uuid
from typing import Any

import fsspec
from fsspec.implementations.local import LocalFileSystem

from raysisa.config import StoreConfig
from raysisa.errors import StoreError, StoreNotFoundError, StoreUnavailableError
from raysisa import telemetry
from raysisa.store import traffic

__all__ = ["ObjectStore"]

log = logging.getLogger(__name__)


def _filesystem_options(config: StoreConfig) -> dict[str, Any]:
    options = dict(config.storage_options)
    if config.uri.startswith(("s3://", "s3a://")):
        # Other processes (shard actors) write to the same bucket: never trust a cached listing.
        options.setdefault("use_listings_cache", False)
        options.setdefault("max_concurrency", 1)  # a whole-object read is one GET, without a HEAD first
        # Bounded, fast failure when the endpoint does not answer; S3's transient errors
        # (throttling, 5xx, resets) are retried by botocore's standard mode.
        config_kwargs = dict(options.get("config_kwargs", {}))
        config_kwargs.setdefault("connect_timeout", 5)
        config_kwargs.setdefault("read_timeout", 60)
        config_kwargs.setdefault("retries", {"max_attempts": 3, "mode": "standard"})
        options["config_kwargs"] = config_kwargs
        if config.endpoint_url:
            client_kwargs = dict(options.get("client_kwargs", {}))
            client_kwargs.setdefault("endpoint_url", config.endpoint_url)
            options["client_kwargs"] = client_kwargs
    elif config.endpoint_url:
        log.warning("endpoint_url=%s ignored: store %s is not s3://", config.endpoint_url, config.uri)
    return options


def _unavailable(exc: BaseException) -> bool:
    """A connection-level failure (the store did not answer), not an answer from the store."""
    names = {cls.__name__ for cls in type(exc).__mro__}
    return bool(
        names
        & {
            "EndpointConnectionError",
            "ConnectTimeoutError",
            "ReadTimeoutError",
            "ConnectionClosedError",
            "ClientConnectorError",
            "ServerDisconnectedError",
            "ConnectionRefusedError",
            "TimeoutError",
        }
    )


def _translate(exc: BaseException, what: str) -> StoreError:
    if isinstance(exc, StoreError):
        return exc
    if isinstance(exc, FileNotFoundError):
        return StoreNotFoundError(f"{what}: it does not exist")
    if _unavailable(exc):
        return StoreUnavailableError(f"{what}: the store did not answer ({type(exc).__name__}: {exc})")
    detail = getattr(exc, "strerror", None) or exc
    return StoreError(f"{what}: {detail}")


def _foreign_errors() -> tuple[type[BaseException], ...]:
    """What a filesystem may raise: OSError, and botocore's and aiohttp's own exceptions."""
    errors: list[type[BaseException]] = [OSError, TimeoutError]
    try:
        from botocore.exceptions import BotoCoreError

        errors.append(BotoCoreError)
    except ImportError:  # pragma: no cover - s3fs not installed
        pass
    try:
        from aiohttp import ClientError

        errors.append(ClientError)
    except ImportError:  # pragma: no cover
        pass
    return tuple(errors)


_FOREIGN = _foreign_errors()


def _json_bytes(obj: Any) -> bytes:
    return json.dumps(obj, indent=1, sort_keys=True).encode()


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
        self._s3 = config.uri.startswith(("s3://", "s3a://"))

    def __repr__(self) -> str:
        return f"ObjectStore({self.config.uri!r})"

    def __reduce__(self):
        return (ObjectStore, (self.config,))

    def _count(self, kind: str, **sizes: Any) -> None:
        """Report an operation to :mod:`raysisa.store.traffic` (before it is sent: on S3 the
        client's own requests are counted, by a hook installed here)."""
        if not traffic.counting():
            return
        if self._s3:
            traffic.hook_s3_client(self.fs.s3)
            traffic.record(None, **sizes)
        else:
            traffic.record(kind, **sizes)

    def path(self, key: str) -> str:
        """Absolute path of ``key`` on the filesystem."""
        return f"{self.root}/{key.lstrip('/')}" if key else self.root

    def uri(self, key: str) -> str:
        """A URI for messages and manifests (protocol included)."""
        return self.fs.unstrip_protocol(self.path(key))

    # -- writes ---------------------------------------------------------------------------
    def _temporary(self, path: str, data: bytes) -> str:
        """Write ``data`` to a fresh temporary file beside ``path`` (local stores), synced."""
        os.makedirs(os.path.dirname(path), exist_ok=True)
        tmp = f"{path}.tmp-{uuid.uuid4().hex}"
        with open(tmp, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        return tmp

    def put_bytes(self, key: str, data: bytes) -> None:
        """Write ``data`` at ``key`` atomically: readers see the old object or the new one."""
        path = self.path(key)
        self._count("PUT", bytes_written=len(data))
        started = time.perf_counter()
        try:
            if self._local:
                # A rename within one folder is atomic; a crash leaves only a .tmp- file.
                os.replace(self._temporary(path, data), path)
            else:
                # One PUT on an object store is atomic.
                self.fs.pipe_file(path, data)
        except _FOREIGN as exc:
            raise _translate(exc, f"cannot write {self.uri(key)}") from None
        telemetry.store_op("write", key, time.perf_counter() - started, len(data))

    def create_bytes(self, key: str, data: bytes) -> bool:
        """Write ``data`` at ``key`` only if no object is there; ``False`` if one was.

        Atomic against concurrent writers: exactly one of several processes creating the
        same key gets ``True``, and readers never see a partial object.
        """
        path = self.path(key)
        self._count("PUT", bytes_written=len(data))
        started = time.perf_counter()
        try:
            if self._local:
                tmp = self._temporary(path, data)
                try:
                    os.link(tmp, path)  # fails if path exists, whoever created it
                except FileExistsError:
                    return False
                finally:
                    os.unlink(tmp)
            else:
                self.fs.pipe_file(path, data, mode="create")  # If-None-Match: * on S3
            telemetry.store_op("write", key, time.perf_counter() - started, len(data))
            return True
        except FileExistsError:
            return False
        except _FOREIGN as exc:
            raise _translate(exc, f"cannot create {self.uri(key)}") from None

    def put_json(self, key: str, obj: Any) -> None:
        self.put_bytes(key, _json_bytes(obj))

    def create_json(self, key: str, obj: Any) -> bool:
        """:meth:`create_bytes` of a JSON document."""
        return self.create_bytes(key, _json_bytes(obj))

    def delete(self, keys: list[str] | str) -> None:
        """Delete objects; missing ones are ignored."""
        keys = [keys] if isinstance(keys, str) else list(keys)
        if not keys:
            return
        paths = [self.path(k) for k in keys]
        self._count("DELETE")  # one batched request, as on S3
        started = time.perf_counter()
        try:
            if self._s3:
                self.fs.rm(paths)  # one batched DeleteObjects per 1000 keys; missing keys are no error
            else:
                for path in paths:
                    with contextlib.suppress(FileNotFoundError):
                        self.fs.rm_file(path)
        except _FOREIGN as exc:
            raise _translate(exc, f"cannot delete under {self.uri('')}") from None
        telemetry.store_op("delete", keys[0], time.perf_counter() - started)

    # -- reads ----------------------------------------------------------------------------
    def get_bytes(self, key: str) -> bytes:
        self._count("GET")
        started = time.perf_counter()
        try:
            data = self.fs.cat_file(self.path(key))
            if traffic.counting():
                traffic.record(None, read=key, bytes_read=len(data))
            telemetry.store_op("read", key, time.perf_counter() - started, len(data))
            return data
        except FileNotFoundError:
            raise StoreNotFoundError(f"{self.uri(key)} does not exist") from None
        except IsADirectoryError:
            raise StoreError(f"{self.uri(key)} is a folder, not an object") from None
        except _FOREIGN as exc:
            raise _translate(exc, f"cannot read {self.uri(key)}") from None

    def get_json(self, key: str) -> Any:
        data = self.get_bytes(key)
        try:
            return json.loads(data)
        except ValueError as exc:
            raise StoreError(f"{self.uri(key)} is not valid JSON: {exc}") from None

    def exists(self, key: str) -> bool:
        """Whether an object is at ``key`` (one HEAD request on S3)."""
        self._count("HEAD")
        try:
            if self._s3:  # s3fs's exists() also LISTs to look for a folder when the HEAD misses
                bucket, path, _ = self.fs.split_path(self.path(key))
                try:
                    self.fs.call_s3("head_object", Bucket=bucket, Key=path)
                except FileNotFoundError:
                    return False
                return True
            return bool(self.fs.exists(self.path(key)))
        except _FOREIGN as exc:
            raise _translate(exc, f"cannot check {self.uri(key)}") from None

    @property
    def local(self) -> bool:
        """Whether the store is a local folder (its writes go through temporary files)."""
        return self._local

    def find(self, prefix: str = "") -> list[str]:
        """Every key under ``prefix``, temporary files of interrupted local writes included."""
        return sorted(self._find(prefix))

    def _find(self, prefix: str) -> list[str]:
        """Every path under ``prefix``, temporary files included (store-relative keys)."""
        base = self.path(prefix)
        self._count("LIST")
        started = time.perf_counter()
        try:
            if self._s3 and prefix:
                # Listing with a key prefix is one LIST request (per 1,000 keys) even when
                # nothing is there; find(base) would then also HEAD and LIST ``base`` itself.
                found = self.fs.find(self.root, prefix=prefix.rstrip("/") + "/")
            else:
                found = self.fs.find(base)
        except FileNotFoundError:
            return []
        except _FOREIGN as exc:
            raise _translate(exc, f"cannot list {self.uri(prefix)}") from None
        telemetry.store_op("list", prefix, time.perf_counter() - started)
        start = len(self.root) + 1
        return [p[start:] for p in found if p.startswith(self.root + "/")]

    def glob(self, pattern: str) -> list[str]:
        """Keys matching ``pattern`` (``*`` within one path segment), sorted: e.g.
        ``*/study.json`` without listing everything below."""
        self._count("LIST")
        try:
            found = self.fs.glob(self.path(pattern))
        except FileNotFoundError:
            return []
        except _FOREIGN as exc:
            raise _translate(exc, f"cannot list {self.uri(pattern)}") from None
        start = len(self.root) + 1
        return sorted(p[start:] for p in found if p.startswith(self.root + "/"))

    def list(self, prefix: str = "") -> list[str]:
        """Every object key under ``prefix`` (recursively), sorted; temporary files excluded."""
        return sorted(k for k in self._find(prefix) if ".tmp-" not in k.rsplit("/", 1)[-1])

    def copy_to(self, target: ObjectStore) -> int:
        """Copy every object of this store to ``target`` (any two stores, e.g. one on S3 to a
        local folder), each with an atomic write; returns the number of objects copied."""
        keys = self.list()
        for key in keys:
            target.put_bytes(key, self.get_bytes(key))
        return len(keys)

    def list_temporary(self, prefix: str = "") -> list[str]:
        """Leftover temporary files of interrupted atomic writes."""
        return sorted(k for k in self._find(prefix) if ".tmp-" in k.rsplit("/", 1)[-1])
