"""Opening the SQLite file that several processes share (budget, stats)."""

from __future__ import annotations

import sqlite3
import time
from typing import Any


def connect_shared(path: str, timeout: float, **kwargs: Any) -> sqlite3.Connection:
    """``sqlite3.connect`` in WAL mode, waiting up to ``timeout`` for other processes.

    Switching a new file to WAL takes a lock that SQLite's busy timeout does not wait for: two
    processes opening one new file together see "database is locked" at once. That step is
    retried here until ``timeout``; every later statement waits through the busy timeout."""
    conn: sqlite3.Connection = sqlite3.connect(path, timeout=timeout, check_same_thread=False, **kwargs)
    deadline, pause = time.monotonic() + timeout, 0.001
    while True:
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            return conn
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() + pause > deadline:
                conn.close()
                raise
            time.sleep(pause)
            pause = min(pause * 2, 0.05)
