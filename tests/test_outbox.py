"""The SQLite outbox: order, acknowledgement, bounds and eviction count, seq across reopen."""

from __future__ import annotations

import json
from pathlib import Path

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
