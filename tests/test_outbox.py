"""The SQLite outbox: order, acknowledgement, bounds and eviction count, seq across reopen."""

from __future__ import annotations

import json
import sqlite3
import time
from pathlib import Path

import pytest

from edge.publish import outbox as outbox_module
from edge.publish.outbox import Outbox


def test_put_after_ack_in_order(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "o.sqlite")
    seqs = [box.put("cam", "t/cam/estimate", {"i": i}) for i in range(5)]
    assert seqs == [0, 1, 2, 3, 4]
    rows = box.after(0, 10)
    assert [json.loads(r.payload)["i"] for r in rows] == [0, 1, 2, 3, 4]
    assert [json.loads(r.payload)["seq"] for r in rows] == seqs
    box.ack([rows[0].id, rows[1].id])
    assert len(box) == 3
    assert [json.loads(r.payload)["i"] for r in box.after(0, 10)] == [2, 3, 4]
    assert [json.loads(r.payload)["i"] for r in box.after(rows[3].id, 10)] == [4]


def test_seq_per_stream_survives_reopen(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "o.sqlite")
    box.put("cam", "a", {})
    box.put("cam", "a", {})
    box.put("mic", "b", {})
    box.close()
    again = Outbox(tmp_path / "o.sqlite")
    assert len(again) == 3
    assert again.put("cam", "a", {}) == 2
    assert again.put("mic", "b", {}) == 1


def test_bounded_evicts_oldest_and_counts(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "o.sqlite", max_messages=10)
    for i in range(25):
        box.put("eeg", "t", {"i": i})
    assert len(box) == 10
    assert box.evicted == 15
    assert [json.loads(r.payload)["i"] for r in box.after(0, 100)] == list(range(15, 25))
    box.close()
    assert Outbox(tmp_path / "o.sqlite", max_messages=10).evicted == 15


def test_replace_unsent_keeps_only_newest_unsent(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "o.sqlite")
    box.put("state", "s", {"n": 0}, retain=True, replace_unsent=True)
    first = box.after(0, 1)[0]
    box.sent_upto = first.id  # handed to the client: must not be replaced
    for n in range(1, 4):
        box.put("state", "s", {"n": n}, retain=True, replace_unsent=True)
    box.put("cam", "c", {"n": 9})
    assert [json.loads(r.payload)["n"] for r in box.after(0, 10)] == [0, 3, 9]
    assert all(r.retain for r in box.after(0, 10)[:2])


def test_checkpoints_run_off_the_writers_and_lose_nothing(tmp_path: Path) -> None:
    """put() never copies the WAL back (that stalled the pipeline); the outbox's own thread does, and the
    copied database holds every message that put() returned."""
    box = Outbox(tmp_path / "o.sqlite")
    assert box._db.execute("PRAGMA wal_autocheckpoint").fetchone()[0] == 0
    for i in range(1500):  # well over SQLite's automatic 1,000-page checkpoint
        box.put("eeg", "t", {"i": i, "pad": "x" * 200})
    wal = tmp_path / "o.sqlite-wal"
    assert wal.stat().st_size > 1000 * 4096  # nothing in put() copied it back
    assert box.checkpoint()  # what the outbox's thread does every CHECKPOINT_INTERVAL_S
    copy = sqlite3.connect(f"file:{tmp_path / 'o.sqlite'}?mode=ro", uri=True)
    copy.execute("PRAGMA journal_mode")  # read the main file, WAL included: both agree
    assert copy.execute("SELECT COUNT(*) FROM messages").fetchone()[0] == 1500
    box.close()
    again = Outbox(tmp_path / "o.sqlite")
    assert [json.loads(r.payload)["i"] for r in again.after(0, 2000)] == list(range(1500))
    again.close()


def test_the_checkpoint_thread_keeps_the_wal_from_growing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(outbox_module, "CHECKPOINT_INTERVAL_S", 0.05)
    box = Outbox(tmp_path / "o.sqlite")
    wal_sizes = []
    for _ in range(4):
        for i in range(400):
            box.put("eeg", "t", {"i": i, "pad": "x" * 200})
        box.ack([r.id for r in box.after(0, 1000)])
        done, deadline = box.checkpoints, time.monotonic() + 5
        while box.checkpoints < done + 2 and time.monotonic() < deadline:  # one whole checkpoint after the ack
            time.sleep(0.02)
        wal_sizes.append((tmp_path / "o.sqlite-wal").stat().st_size)
    assert box.checkpoints >= 4
    box.close()
    # a WAL that is checkpointed is reused from its start: it stays at one round's pages, it does not add up
    assert wal_sizes[-1] <= wal_sizes[0] * 1.5, wal_sizes
