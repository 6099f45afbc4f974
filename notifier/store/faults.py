"""What the machine under the store can do wrong, told apart from our own bugs.

* :func:`storage_fault` says whether an exception out of a write means the storage is
  failing (full, read-only, I/O error, gone) rather than a bug, and in a few words what.
* :func:`storage_busy` says whether a write found the lock taken (a write that does not
  wait for it, see the SQLite store's send marks), to be tried again in a moment.
* :func:`storage_health` looks at the filesystem holding the state (an empty probe file at most),
  for ``status`` and for the probe that decides when intake may resume.
* :func:`check_state_file` refuses, before anything is written, a file at ``state:`` that
  is not a fedmsg-notify state database (corrupt, or some other program's file).
"""

from __future__ import annotations

import contextlib
import errno
import os
import sqlite3
from pathlib import Path

# SQLite's primary result codes that mean "the storage", not "the query".
_SQLITE_FAULTS = {
    8: "storage is read-only",  # SQLITE_READONLY
    10: "storage I/O error",  # SQLITE_IOERR
    13: "storage full",  # SQLITE_FULL
    14: "storage cannot be opened",  # SQLITE_CANTOPEN
}
_OS_FAULTS = {
    errno.ENOSPC: "storage full",
    errno.EDQUOT: "storage full (quota)",
    errno.EROFS: "storage is read-only",
    errno.EIO: "storage I/O error",
}
# Below this much free space a write of one batch may already fail.
LOW_SPACE = 256 * 1024
# The tables every state database has; a file with none of them is someone else's.
OUR_TABLES = frozenset({"accepted", "deliveries", "digest_entries", "destinations", "counters"})


def storage_fault(exc: BaseException) -> str | None:
    """A short reason if ``exc`` says the storage failed (full, read-only, I/O), else None."""
    if isinstance(exc, sqlite3.Error):
        code = getattr(exc, "sqlite_errorcode", None)
        if isinstance(code, int) and code & 0xFF in _SQLITE_FAULTS:
            return _SQLITE_FAULTS[code & 0xFF]
        text = str(exc).lower()
        for words, reason in (
            ("disk is full", "storage full"),
            ("readonly database", "storage is read-only"),
            ("disk i/o error", "storage I/O error"),
        ):
            if words in text:
                return reason
        return None
    if isinstance(exc, OSError) and exc.errno in _OS_FAULTS:
        return _OS_FAULTS[exc.errno]
    return None


def storage_busy(exc: BaseException) -> bool:
    """Whether ``exc`` says another connection holds the write lock right now (try again shortly)."""
    if not isinstance(exc, sqlite3.OperationalError):
        return False
    code = getattr(exc, "sqlite_errorcode", None)
    if isinstance(code, int):
        return code & 0xFF == 5  # SQLITE_BUSY
    return "database is locked" in str(exc).lower()


def storage_health(path: str | Path) -> str | None:
    """What is wrong with the filesystem holding ``path`` (read-only, full); None if fine.

    It writes nothing but an empty probe file, removed at once.
    """
    directory = Path(path).parent
    try:
        stats = os.statvfs(directory)
    except OSError as exc:
        return f"cannot look at {directory}: {exc.strerror or exc}"
    if stats.f_flag & os.ST_RDONLY:
        return f"{directory} is on a read-only filesystem"
    free = stats.f_bavail * stats.f_frsize
    if free < LOW_SPACE:
        return f"storage full: {free // 1024} KiB free in {directory}"
    # The kernel may have turned the filesystem read-only after an error without the mount
    # flag showing it (ext4's emergency_ro): creating an empty file is the only sure test.
    probe = directory / f".fedmsg-notify-probe-{os.getpid()}"
    try:
        os.close(os.open(probe, os.O_CREAT | os.O_WRONLY | os.O_EXCL, 0o600))
    except FileExistsError:
        pass
    except OSError as exc:
        if exc.errno == errno.EROFS:
            return f"{directory} is on a read-only filesystem"
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            return f"storage full: no room for a file in {directory}"
        return f"{directory} is not writable: {exc.strerror or exc}"
    with contextlib.suppress(OSError):
        os.unlink(probe)
    return None


class BadStateFile(Exception):
    """The file at ``state:`` cannot be used; the message says what and what to do."""


def check_state_file(path: str | Path) -> None:
    """Raise :class:`BadStateFile` if ``path`` exists and is not a usable state database. Never writes."""
    path = Path(path)
    if not path.exists() or path.stat().st_size == 0:
        return
    aside = f"move it aside (e.g. mv {path} {path}.broken) and start again; fedmsg-notify never deletes it"
    try:
        db = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True, timeout=5.0)
    except sqlite3.Error as exc:
        raise BadStateFile(f"{path} cannot be opened as SQLite ({exc}); {aside}") from exc
    try:
        tables = {row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        verdict = db.execute("PRAGMA quick_check(1)").fetchone()
    except sqlite3.DatabaseError as exc:
        raise BadStateFile(f"{path} is damaged or not SQLite ({exc}); {aside}") from exc
    finally:
        db.close()
    if verdict is not None and verdict[0] != "ok":
        raise BadStateFile(f"{path} is damaged (SQLite integrity check: {verdict[0]}); {aside}")
    if tables and not tables & OUR_TABLES:
        shown = ", ".join(sorted(tables)[:5])
        raise BadStateFile(
            f"{path} is not a fedmsg-notify state database (it holds the tables {shown}); {aside}"
        )
