"""Files only their owner may read: the SQLite databases hold token hashes, operator
credentials and alert history, none of which other local users should see.

``sqlite3.connect`` creates a missing database with the process umask (0644 usually), and
its ``-wal``/``-shm`` files take the database's mode. So the file is created first, empty
(SQLite treats an empty file as a new database) and 0600, before SQLite ever opens it; an
existing file (made by an older version) is tightened to 0600.
"""

from __future__ import annotations

import logging
import os
import stat
from pathlib import Path

logger = logging.getLogger(__name__)

PRIVATE_FILE_MODE = 0o600
#: Files SQLite keeps beside a database in WAL mode (and the rollback journal).
SQLITE_SIDE_FILES = ("-wal", "-shm", "-journal")


def ensure_private(path: Path | str) -> None:
    """Make an existing file 0600 (a no-op if it is already, or absent). A file we cannot
    change (another user's) is left as it is, with a warning: refusing to start over a
    mode would be worse than running with it."""
    path = Path(path)
    try:
        mode = stat.S_IMODE(path.stat().st_mode)
    except FileNotFoundError:
        return
    if mode == PRIVATE_FILE_MODE:
        return
    try:
        path.chmod(PRIVATE_FILE_MODE)
    except OSError as exc:
        logger.warning("could not make %s private (mode %o): %s", path, mode, exc)


def create_private_sqlite(path: Path | str) -> Path:
    """Create the SQLite database file ``path`` 0600 if it is missing, tighten it (and its
    WAL, shared-memory and journal files) to 0600 if not; returns the path. Call it before
    the first ``sqlite3.connect(path)``. Parent directories are created (0700)."""
    path = Path(path)
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    try:
        # O_EXCL: never truncate or follow anything that appeared meanwhile.
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, PRIVATE_FILE_MODE)
    except FileExistsError:
        pass
    else:
        os.close(fd)
    for suffix in ("", *SQLITE_SIDE_FILES):
        ensure_private(f"{path}{suffix}")
    return path
