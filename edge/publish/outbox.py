"""An on-disk queue (SQLite) that keeps outgoing messages until the broker has acknowledged them.

Every message the device must not lose (estimates, the fused state) is written here first and
deleted only after its PUBACK; a restart of EmoEdge sends what is left, oldest first. The outbox
also owns the per-stream sequence numbers, so that ``seq`` keeps counting across restarts and a
subscriber can de-duplicate by ``(source, seq)``.

It is bounded: when full, the oldest messages are evicted and counted (``evicted``, persisted).
A stream marked ``replace_unsent`` (the retained state) keeps only its newest unsent message.

Durability: WAL journal with ``synchronous=NORMAL``: a crash of the process loses nothing that
``put`` returned; a power cut may lose the last transactions (``synchronous = "full"`` closes that
gap at the cost of one fsync a message).

Checkpoints (copying the WAL back into the database, with an fsync) run on a thread of their own, on a
second connection, every ``CHECKPOINT_INTERVAL_S``, never inside ``put``: SQLite's automatic checkpoint
runs in whichever commit crosses 1,000 WAL pages, and that ``put`` (about one in 80 on the bridge)
stalled the pipeline for 5-36 ms. A PASSIVE checkpoint waits for no one, so writers never wait for it;
what it has not copied yet stays in the WAL, which is as durable as before.
"""

from __future__ import annotations

import json
import logging
import os
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from edge.errors import EmoEdgeError
from firmware_bridge.loop_thread import LoopThread

CHECKPOINT_INTERVAL_S = 1.0


class OutboxError(EmoEdgeError):
    """The outbox file cannot be opened or written."""


@dataclass(frozen=True)
class OutboxRow:
    id: int
    stream: str
    topic: str
    payload: bytes
    qos: int
    retain: bool


_SCHEMA = """
CREATE TABLE IF NOT EXISTS messages (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    stream TEXT NOT NULL,
    topic TEXT NOT NULL,
    payload BLOB NOT NULL,
    qos INTEGER NOT NULL,
    retain INTEGER NOT NULL,
    created REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS messages_stream ON messages(stream, id);
CREATE TABLE IF NOT EXISTS counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
"""


class Outbox:
    """Thread-safe: the pipeline puts, the publisher's sender thread reads and acknowledges."""

    def __init__(
        self, path: str | os.PathLike[str], max_messages: int = 100_000, synchronous: Literal["normal", "full"] = "normal"
    ) -> None:
        self.path = Path(path)
        self.max_messages = max_messages
        self._lock = threading.Lock()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(str(self.path), check_same_thread=False, isolation_level=None)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute(f"PRAGMA synchronous={synchronous.upper()}")
            self._db.execute("PRAGMA wal_autocheckpoint=0")  # checkpoints run on their own thread (module docstring)
            self._db.executescript(_SCHEMA)
            self._count = int(self._db.execute("SELECT COUNT(*) FROM messages").fetchone()[0])
        except sqlite3.DatabaseError as exc:
            raise OutboxError(f"{self.path}: cannot open the outbox ({exc}); move the file away to start empty") from None
        except OSError as exc:  # a parent that is a file, or a folder we may not write
            raise OutboxError(f"{self.path}: cannot create the outbox ({exc.strerror or exc})") from None
        self.sent_upto = 0  # rows with id <= sent_upto have been handed to the MQTT client
        self.checkpoints = 0  # checkpoints that copied every WAL page back (for tests and stats)
        self._checkpointer = LoopThread()
        self._checkpointer.start(self._checkpoint_loop, name=f"outbox-checkpoint-{self.path.name}")

    def _checkpoint_loop(self) -> None:
        """Copy the WAL back into the database now and then, off the threads that put and acknowledge."""
        stop = self._checkpointer.stop_event
        try:
            db = sqlite3.connect(str(self.path), isolation_level=None, check_same_thread=False)
        except sqlite3.DatabaseError:
            return  # the file opened a moment ago; if it cannot now, put() reports the problem
        try:
            while not stop.wait(CHECKPOINT_INTERVAL_S):
                self.checkpoint(db)
            self.checkpoint(db)
        finally:
            db.close()

    def checkpoint(self, db: sqlite3.Connection | None = None) -> bool:
        """One PASSIVE checkpoint (on ``db``, else a connection of its own); True when the WAL was copied whole."""
        own = db is None
        conn = sqlite3.connect(str(self.path), isolation_level=None) if own else db
        assert conn is not None
        try:
            busy, wal_pages, copied = conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
        except sqlite3.DatabaseError:
            return False  # a damaged or vanished file: put() and after() say so where it matters
        finally:
            if own:
                conn.close()
        done = not busy and copied == wal_pages
        self.checkpoints += int(done and wal_pages > 0)
        return done

    # --- counters --------------------------------------------------------------------------
    def _counter(self, name: str) -> int:
        row = self._db.execute("SELECT value FROM counters WHERE name = ?", (name,)).fetchone()
        return int(row[0]) if row else 0

    def _bump(self, name: str, by: int = 1) -> int:
        self._db.execute(
            "INSERT INTO counters(name, value) VALUES (?, ?) ON CONFLICT(name) DO UPDATE SET value = value + ?",
            (name, by, by),
        )
        return self._counter(name)

    def next_seq(self, stream: str) -> int:
        """The next sequence number of a stream (0, 1, 2, ...), persisted."""
        with self._lock:
            return self._bump(f"seq:{stream}") - 1

    @property
    def evicted(self) -> int:
        with self._lock:
            return self._counter("evicted")

    def __len__(self) -> int:
        return self._count

    # --- queue -----------------------------------------------------------------------------
    def put(
        self, stream: str, topic: str, payload: dict[str, Any], qos: int = 1, retain: bool = False,
        replace_unsent: bool = False, seq: int | None = None,
    ) -> int:
        """Stamp ``payload`` with the stream's next ``seq`` (or the ``seq`` given: an explanation carries its
        estimate's) and store it; returns the seq."""
        with self._lock:
            try:
                self._db.execute("BEGIN IMMEDIATE")
                if replace_unsent:
                    cur = self._db.execute("DELETE FROM messages WHERE stream = ? AND id > ?", (stream, self.sent_upto))
                    self._count -= cur.rowcount
                seq = self._bump(f"seq:{stream}") - 1 if seq is None else seq
                payload = {**payload, "seq": seq}
                body = json.dumps(payload, separators=(",", ":"), allow_nan=False).encode()
                self._db.execute(
                    "INSERT INTO messages(stream, topic, payload, qos, retain, created) VALUES (?, ?, ?, ?, ?, ?)",
                    (stream, topic, body, qos, int(retain), time.time()),
                )
                self._count += 1
                if self._count > self.max_messages:
                    excess = self._count - self.max_messages
                    self._db.execute(
                        "DELETE FROM messages WHERE id IN (SELECT id FROM messages ORDER BY id LIMIT ?)", (excess,)
                    )
                    self._bump("evicted", excess)
                    self._count -= excess
                self._db.execute("COMMIT")
            except sqlite3.DatabaseError as exc:
                self._db.execute("ROLLBACK")
                raise OutboxError(f"{self.path}: cannot store a message ({exc})") from None
            return seq

    def after(self, after_id: int, limit: int) -> list[OutboxRow]:
        """Up to ``limit`` stored messages with id > ``after_id``, oldest first."""
        with self._lock:
            rows = self._db.execute(
                "SELECT id, stream, topic, payload, qos, retain FROM messages WHERE id > ? ORDER BY id LIMIT ?",
                (after_id, limit),
            ).fetchall()
        return [OutboxRow(r[0], r[1], r[2], bytes(r[3]), r[4], bool(r[5])) for r in rows]

    def ack(self, ids: list[int]) -> None:
        """Delete acknowledged messages (ids already evicted or replaced are ignored)."""
        if not ids:
            return
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            cur = self._db.executemany("DELETE FROM messages WHERE id = ?", [(i,) for i in ids])
            self._count -= max(0, cur.rowcount)
            self._db.execute("COMMIT")

    def close(self) -> None:
        self._checkpointer.stop(timeout=5.0)  # its last checkpoint leaves the WAL copied back
        with self._lock:
            self._db.close()


class EvictionReport:
    """Evictions are data lost: logged once per ``interval_s`` while they happen, and at exit (``final``)."""

    def __init__(self, outbox: Outbox, log: logging.Logger, interval_s: float) -> None:
        self.outbox, self._log, self.interval_s = outbox, log, interval_s
        self.seen = outbox.evicted  # evictions in all, as of the last look (still known after the outbox closes)
        self._pending = 0
        self._reported_at = 0.0

    def log(self, final: bool = False) -> None:
        evicted = self.outbox.evicted
        if evicted > self.seen:
            self._pending += evicted - self.seen
            self.seen = evicted
        if not self._pending:
            return
        now = time.monotonic()
        if not final and now - self._reported_at < self.interval_s:
            return
        self._log.warning("outbox full (%d messages): %d oldest message(s) evicted%s (%d in all)", self.outbox.max_messages,
                          self._pending, " since the last report" if self._reported_at else "", evicted)
        self._pending, self._reported_at = 0, now
