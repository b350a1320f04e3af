"""Where a sweep's pieces live under one ``--storage`` URI (see :mod:`raysisa.tune.runner`),
and the raysisa store behind a Tune storage URI."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, urlsplit

from raysisa.config import StoreConfig
from raysisa.errors import ConfigError
from raysisa.store import ObjectStore
from raysisa.tune.spec import Cell

__all__ = ["SweepPaths", "storage_store"]

log = logging.getLogger(__name__)


def storage_store(uri: str, *parts: str) -> StoreConfig:
    """The raysisa store at ``uri`` (a Tune storage URI: an S3 ``endpoint_override`` and
    ``scheme`` in its query become the store's endpoint), with ``parts`` appended to its path."""
    split = urlsplit(uri)
    query = {k: v[-1] for k, v in parse_qs(split.query).items()}
    base = uri.split("?", 1)[0].rstrip("/")
    options: dict[str, Any] = {}
    endpoint = None
    if split.scheme == "s3":
        override = query.pop("endpoint_override", None)
        scheme = query.pop("scheme", "https")
        if override:
            endpoint = override if "://" in override else f"{scheme}://{override}"
        region = query.pop("region", None)
        if region:
            options["client_kwargs"] = {"region_name": region}
    if query and split.scheme == "s3":
        log.info("storage options %s are for Ray Tune only", sorted(query))
    path = "/".join([base, *parts])
    return StoreConfig(uri=path, endpoint_url=endpoint, storage_options=options)


def _join(uri: str, *parts: str) -> str:
    """``uri`` with ``parts`` appended to its path, keeping its query."""
    base, sep, query = uri.partition("?")
    joined = "/".join([base.rstrip("/"), *parts])
    return f"{joined}{sep}{query}"


@dataclass(frozen=True)
class SweepPaths:
    """Where a study's pieces live under one storage URI."""

    storage: str
    study: str

    @classmethod
    def of(cls, storage: str, study: str) -> SweepPaths:
        if not storage.strip():
            raise ConfigError("--storage is empty")
        if "://" not in storage:
            storage = os.path.abspath(os.path.expanduser(storage))
        return cls(storage, study)

    @property
    def root(self) -> str:
        """Tune's ``storage_path`` for every cell of the study."""
        return _join(self.storage, self.study)

    def cell(self, cell: Cell) -> str:
        return _join(self.storage, self.study, cell.name)

    def experiment(self, name: str) -> str:
        """The Tune experiment ``name`` of the study (a hybrid study has one, ``hybrid``)."""
        return _join(self.storage, self.study, name)

    @property
    def files(self) -> ObjectStore:
        """raysisa's objects of the study (study.json, prepared.json, report/)."""
        return ObjectStore(storage_store(self.storage, self.study))

    @property
    def models(self) -> StoreConfig:
        return storage_store(self.storage, "models")
