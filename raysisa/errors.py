"""Exception hierarchy.

Every error raysisa raises on purpose is a :class:`RaysisaError`, so callers (and the CLI)
can tell "you asked for something wrong" apart from a bug. Each subclass takes a single
message argument, which keeps them picklable across Ray process boundaries.
"""

from __future__ import annotations

__all__ = [
    "RaysisaError",
    "ConfigError",
    "DataError",
    "StoreError",
    "StoreNotFoundError",
    "StoreUnavailableError",
    "StoreBusyError",
    "LeaseLostError",
    "ConflictError",
    "CheckpointCorruptError",
    "InvalidIdsError",
    "StaleStateError",
    "ShardUnavailableError",
    "ClusterUnavailableError",
]


class RaysisaError(Exception):
    """Base class of every error raysisa raises deliberately."""


class ConfigError(RaysisaError, ValueError):
    """A configuration value is missing, out of range or inconsistent."""


class DataError(RaysisaError, ValueError):
    """A data source is unknown, unreadable or malformed (missing column, duplicate ids...)."""


class StoreError(RaysisaError):
    """The object store could not be read or written."""


class StoreNotFoundError(StoreError, FileNotFoundError):
    """An object or a run that should be on the store is not there."""


class StoreUnavailableError(StoreError):
    """The object store did not answer (connection refused, timed out) after bounded retries."""


class StoreBusyError(StoreError):
    """Another process holds the store's writer lease; the message names the holder."""


class LeaseLostError(StoreError):
    """This writer's lease expired or was taken over before it committed; nothing was committed."""


class ConflictError(StoreError):
    """Another writer committed a new state of the store first; nothing was committed."""


class CheckpointCorruptError(StoreError):
    """A checkpoint failed its integrity check (sha256 mismatch, truncation, bad manifest).

    Corrupt checkpoints are reported, never loaded.
    """


class InvalidIdsError(RaysisaError, ValueError):
    """Sample ids given to ``unlearn`` are malformed or unknown. Nothing was changed."""


class StaleStateError(RaysisaError):
    """The store holds shards that are not trained up to their current data."""


class ShardUnavailableError(RaysisaError):
    """A shard actor died and could not be restarted."""


class ClusterUnavailableError(RaysisaError):
    """The Ray cluster at the given address did not answer within the connect timeout."""


class DivergedError(RaysisaError, ArithmeticError):
    """Training or unlearning left non-finite weights (a learning rate too large, usually)."""
