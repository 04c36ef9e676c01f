"""Snapshots of existing rows ("data liberation"): every row of a captured model, as events.

A snapshot writes one ``<table>.snapshot`` event per existing row into the outbox, in primary
key order, one short transaction per chunk, beside the live capture events and ordered with
them by ``seq``. The modules, by role:

- `keys`     keyset pagination over any primary key (composite too) and the cursor's JSON form
- `chunks`   the SQL on the snapshotted table: bounds and locked chunks
- `state`    all SQL on the snapshot table (and the backlog probe for ``max_pending``)
- `options`  settings, result and progress values
- `pacing`   between chunks: the adaptive chunk size, the rate cap, the backlog pause
- `runner`   the chunk loop: resume, fencing, retries
- `progress` the command's live progress bar

See docs/DATA-LIBERATION.md.
"""

from outbox.snapshot.options import Progress, SnapshotOptions, SnapshotResult
from outbox.snapshot.state import SnapshotInfo, SnapshotState

__all__ = ["Progress", "SnapshotInfo", "SnapshotOptions", "SnapshotResult", "SnapshotState"]
