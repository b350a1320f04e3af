"""Named crash points, for the crash-recovery tests only.

Every step that writes to a store calls :func:`crash_point` with a name such as
``delete.object`` (after each new object of a deletion) or ``batch.planned``. When the
environment variable ``RAYSISA_CRASH_AT`` is ``NAME`` or ``NAME@N``, the process kills
itself with ``SIGKILL`` the N-th time (default: the first) it passes ``NAME``: a real,
unannounced death, with no ``finally`` blocks, no flushing and no lease release, exactly
what a power cut or the OOM killer does. Without the variable a call costs a dict lookup.

The tests in ``tests/integration/test_crash_recovery.py`` kill a subprocess at every name
in :data:`CRASH_POINTS` and recover by each documented path.
"""

from __future__ import annotations

import os
import signal
from collections import Counter

__all__ = ["crash_point", "CRASH_POINTS", "ENV"]

ENV = "RAYSISA_CRASH_AT"

# Every crash point in the code, with where it sits. ``{kind}`` is a transaction kind:
# ``ingest`` or ``delete``.
CRASH_POINTS = {
    "{kind}.begin": "the transaction's journal (its intent) is written; nothing else yet",
    "{kind}.object": "after each new data object (partition, test split, index, tombstones)",
    "{kind}.manifest": "ingest only: raysisa.json is written, the first commit is not",
    "{kind}.committed": "the commit object is written; old objects not yet swept",
    "{kind}.swept": "old data objects are deleted; stale checkpoints not yet",
    "{kind}.done": "the sweep is complete and the journal deleted; the lease is still held",
    "train.slice": "after each slice checkpoint is written",
    "batch.planned": "a coordinator batch's plan is logged; nothing executed",
    "batch.overlay": "after each approximate overlay of a batch is written",
    "batch.retrained": "the batch's exact shards are retrained; states not yet recorded",
    "batch.recorded": "the batch's requests have their new states; the plan is not marked done",
    "restore.retrained": "approximate shards are retrained exactly; their overlays not yet dropped",
    "restore.dropped": "the overlays are dropped; the requests they carried not yet marked exact",
}

_counts: Counter[str] = Counter()


def _target() -> tuple[str, int] | None:
    spec = os.environ.get(ENV, "").strip()
    if not spec:
        return None
    name, _, nth = spec.partition("@")
    return name, int(nth) if nth else 1


def crash_point(name: str) -> None:
    """SIGKILL this process here if ``RAYSISA_CRASH_AT`` names ``name`` (see the module doc)."""
    target = _target()
    if target is None or target[0] != name:
        return
    _counts[name] += 1
    if _counts[name] == target[1]:
        os.kill(os.getpid(), signal.SIGKILL)
