"""The streaming decoder: exact round trips, garbage that costs at most the frame it hits, sequence
gaps and duplicates, versions it cannot read, clock unwrapping and drift; fuzzed with hypothesis."""

from __future__ import annotations

import struct

import numpy as np
from cobs import cobs
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from firmware_bridge import protocol as P

FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def eeg_stream(n_frames: int, channels: int = 4, block: int = 8, seed: int = 0, fmt: int = P.FMT_INT24,
               t0: int = 0, seq: int = 0) -> tuple[list[bytes], list[np.ndarray]]:
    rng = np.random.default_rng(seed)
    enc = P.FrameEncoder(P.SENSOR_EEG, seq=seq)
    frames, blocks = [], []
    for i in range(n_frames):
        counts = rng.integers(-30000, 30000, size=(channels, block))
        frames.append(enc.eeg(t0 + i * 62_500, counts, 128.0, 0.5, fmt))
        blocks.append(counts)
    return frames, blocks


def decode_all(decoder: P.FrameDecoder, data: bytes, chunk: int = 0, t: float = 0.0) -> list[P.Frame]:
    if not chunk:
        return decoder.feed(data, host_time=t)
    out = []
    for i in range(0, len(data), chunk):
        out += decoder.feed(data[i:i + chunk], host_time=t)
    return out


def raw_frame(version: int = P.VERSION, ftype: int = P.FrameType.HEARTBEAT, payload: bytes = b"\0\0\0\0", seq: int = 0,
              magic: int = P.MAGIC, plen: int | None = None) -> bytes:
    head = P.HEADER.pack(magic, version, ftype, 1, 0, 0, seq, 0, len(payload) if plen is None else plen)
    body = head + payload
    return b"\0" + cobs.encode(body + struct.pack("<I", P.crc32(body))) + b"\0"


def test_round_trip_of_every_sample_format() -> None:
    for fmt in (P.FMT_INT16, P.FMT_INT24, P.FMT_FLOAT32):
        frames, blocks = eeg_stream(20, fmt=fmt, seed=fmt)
        decoder = P.FrameDecoder()
        got = decode_all(decoder, b"".join(frames), chunk=13)
        assert len(got) == 20
        for f, counts in zip(got, blocks, strict=True):
            assert isinstance(f.body, P.EegBlock)
            np.testing.assert_array_equal(f.body.counts(), counts)
            assert f.body.microvolts().dtype == np.float32
        s = decoder.stats()
        assert s["frames"] == 20 and s["frames_by_type"] == {"eeg": 20}
        assert s["crc_errors"] == s["lost_frames"] == s["resyncs"] == s["discarded_bytes"] == 0
        assert s["samples"]["eeg"] == 160


def test_garbage_between_frames_costs_nothing() -> None:
    frames, _ = eeg_stream(30)
    rng = np.random.default_rng(1)
    stream = b"".join(f + rng.integers(0, 256, size=int(rng.integers(1, 300)), dtype=np.uint8).tobytes() for f in frames)
    decoder = P.FrameDecoder()
    got = decode_all(decoder, stream, chunk=64)
    assert [f.seq for f in got] == list(range(30))
    assert decoder.counters.lost_frames == 0 and decoder.counters.resyncs > 0 and decoder.counters.discarded_bytes > 0


def test_corruption_costs_only_the_frame_it_hits_and_is_counted() -> None:
    frames, _ = eeg_stream(40)
    hit = {3, 17, 18, 39}
    damaged = []
    for i, f in enumerate(frames):
        if i in hit:
            b = bytearray(f)
            b[len(b) // 2] ^= 0x5A  # one flipped byte in the middle
            f = bytes(b)
        damaged.append(f)
    decoder = P.FrameDecoder()
    got = decode_all(decoder, b"".join(damaged), chunk=100)
    assert [f.seq for f in got] == [i for i in range(40) if i not in hit]
    assert decoder.counters.crc_errors + decoder.counters.framing_errors == 4
    assert decoder.counters.lost_frames == 3  # frame 39 is the last: no later frame reveals its loss


def test_truncated_frames_interleaved_with_good_ones() -> None:
    frames, _ = eeg_stream(12)
    stream = b""
    for i, f in enumerate(frames):
        stream += f[: len(f) // 3] if i % 3 == 1 else f  # every third frame cut short (a half-sent frame)
    decoder = P.FrameDecoder()
    got = decode_all(decoder, stream, chunk=5)
    assert [f.seq for f in got] == [i for i in range(12) if i % 3 != 1]
    assert decoder.counters.lost_frames == 4 and decoder.counters.resyncs == 4


def test_sequence_wraps_and_duplicates_are_dropped() -> None:
    frames, _ = eeg_stream(6, seq=65533)
    stream = frames[0] + frames[1] + frames[1] + frames[2] + frames[4] + frames[5]  # dup of 65534; 1 lost after wrap
    decoder = P.FrameDecoder()
    got = decoder.feed(stream)
    assert [f.seq for f in got] == [65533, 65534, 65535, 1, 2]
    assert decoder.counters.duplicates == 1 and decoder.counters.lost_frames == 1 and decoder.counters.seq_jumps == 0


def test_board_restart_resets_tracking() -> None:
    a, _ = eeg_stream(5)
    b, _ = eeg_stream(5, t0=10)  # a second encoder: FLAG_FIRST and seq 0 again
    decoder = P.FrameDecoder()
    got = decoder.feed(b"".join(a + b))
    assert len(got) == 10 and decoder.counters.board_resets == 1 and decoder.counters.lost_frames == 0 and decoder.counters.seq_jumps == 0


def test_newer_major_version_is_counted_not_misread() -> None:
    enc = P.FrameEncoder()
    stream = enc.heartbeat(0) + raw_frame(version=0x20, seq=1) + raw_frame(version=0x31, seq=2) + enc.heartbeat(10)
    decoder = P.FrameDecoder()
    got = decoder.feed(stream)
    assert len(got) == 2 and decoder.counters.unsupported_version == 2
    assert decoder.stats()["versions_seen"] == ["magic 0xee version 2.0", "magic 0xee version 3.1"]
    assert decoder.counters.crc_errors == 0


def test_newer_minor_version_unknown_type_is_skipped_and_keeps_gap_count_exact() -> None:
    enc = P.FrameEncoder()
    first = enc.heartbeat(0)
    unknown = raw_frame(version=0x13, ftype=0x42, payload=b"future", seq=1)
    enc.seq = 2
    stream = first + unknown + enc.heartbeat(5)
    decoder = P.FrameDecoder()
    got = decoder.feed(stream)
    assert [f.seq for f in got] == [0, 2]
    assert decoder.counters.unknown_type == 1 and decoder.counters.lost_frames == 0


def test_malformed_payload_with_good_crc_is_rejected() -> None:
    bad_eeg = P.EEG_HEAD.pack(P.FMT_INT16, 4, 8, 128.0, 1.0) + b"\1" * 10  # declares 64 bytes, has 10
    decoder = P.FrameDecoder()
    assert decoder.feed(raw_frame(ftype=P.FrameType.EEG, payload=bad_eeg) + raw_frame(plen=9)) == []
    assert decoder.counters.malformed == 2 and decoder.counters.crc_errors == 0


def test_oversize_run_is_dropped_and_the_next_frame_read() -> None:
    enc = P.FrameEncoder()
    stream = enc.heartbeat(0) + b"\x07" * (P.MAX_ENCODED * 3) + enc.heartbeat(1)
    decoder = P.FrameDecoder()
    got = decode_all(decoder, stream, chunk=1000)
    assert [f.seq for f in got] == [0, 1] and decoder.counters.oversize == 1
    assert len(decoder._buf) < P.MAX_ENCODED  # memory stays bounded


def test_half_frame_at_start_is_not_a_crc_error() -> None:
    frames, _ = eeg_stream(3)
    decoder = P.FrameDecoder()
    got = decoder.feed(frames[0][len(frames[0]) // 2:] + frames[1] + frames[2])
    assert [f.seq for f in got] == [1, 2] and decoder.counters.crc_errors == 0 and decoder.counters.resyncs == 1


def test_board_clock_unwraps_past_32_bits() -> None:
    enc = P.FrameEncoder()
    ts = [0xFFFF_0000, 0xFFFF_FF00, 0x0000_0100, 0x0001_0000]
    got = P.FrameDecoder().feed(b"".join(enc.heartbeat(t) for t in ts))
    assert [f.board_time_us for f in got] == [0xFFFF_0000, 0xFFFF_FF00, (1 << 32) + 0x100, (1 << 32) + 0x10000]


def test_drift_is_measured_in_ppm() -> None:
    rng = np.random.default_rng(3)
    for ppm in (-250.0, 0.0, 120.0):
        enc = P.FrameEncoder()
        decoder = P.FrameDecoder()
        for i in range(600):  # 60 s of frames every 100 ms, 0.2 ms of arrival jitter
            host = 1000.0 + i * 0.1
            board_us = int(round(i * 0.1 * (1 + ppm * 1e-6) * 1e6))
            decoder.feed(enc.heartbeat(board_us), host_time=host + abs(rng.normal(0, 2e-4)))
        drift = decoder.drift_ppm()
        assert drift is not None and abs(drift - ppm) < 15, (ppm, drift)


def test_rate_is_measured_from_arrivals() -> None:
    frames, _ = eeg_stream(65, block=8)
    decoder = P.FrameDecoder()
    for i, f in enumerate(frames):
        decoder.feed(f, host_time=i / 16)  # 16 frames of 8 samples a second = 128 Hz
    s = decoder.stats()
    assert abs(s["rate_hz"] - 128.0) < 1e-6 and s["nominal_rate_hz"] == 128.0


# ---------------------------------------------------------------------------------------------
# fuzzing


@FUZZ
@given(st.lists(st.binary(max_size=600), max_size=12))
def test_decoder_never_raises_on_arbitrary_bytes(chunks: list[bytes]) -> None:
    decoder = P.FrameDecoder()
    for c in chunks:
        for f in decoder.feed(c):
            assert isinstance(f.type, P.FrameType)
    s = decoder.stats()
    assert s["frames"] >= 0 and len(decoder._buf) <= decoder.max_encoded


@FUZZ
@given(data=st.data(), n=st.integers(1, 25))
def test_any_chunking_gives_the_same_frames(data: st.DataObject, n: int) -> None:
    frames, blocks = eeg_stream(n, channels=3, block=4, seed=n)
    stream = b"".join(frames)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=30)))
    decoder = P.FrameDecoder()
    got = []
    for a, b in zip([0, *cuts], [*cuts, len(stream)], strict=True):
        got += decoder.feed(stream[a:b])
    assert len(got) == n
    for f, counts in zip(got, blocks, strict=True):
        np.testing.assert_array_equal(f.body.counts(), counts)  # type: ignore[union-attr]


@FUZZ
@given(data=st.data())
def test_damage_costs_at_most_the_frames_it_hits(data: st.DataObject) -> None:
    """Random garbage inserted anywhere: every frame it did not land in is read, and nothing is misread."""
    n = 20
    frames, blocks = eeg_stream(n, channels=2, block=4, seed=7)
    pieces = [bytearray(f) for f in frames]
    touched: set[int] = set()
    for _ in range(data.draw(st.integers(0, 6))):
        i = data.draw(st.integers(0, n - 1))
        where = data.draw(st.integers(0, len(pieces[i])))
        junk = data.draw(st.binary(min_size=1, max_size=40))
        pieces[i][where:where] = junk
        touched.add(i)  # delimiters on both sides of every frame: junk hurts only the frame it lands in
    decoder = P.FrameDecoder()
    got = decoder.feed(b"".join(bytes(p) for p in pieces))
    seqs = [f.seq for f in got]
    assert set(range(n)) - touched <= set(seqs)
    assert len(seqs) == len(set(seqs))
    for f in got:  # nothing misread: every frame that came out is one that went in, intact
        np.testing.assert_array_equal(f.body.counts(), blocks[f.seq])  # type: ignore[union-attr]


# ---------------------------------------------------------------------------------------------
# plain-text mode


def test_text_lines_columns_errors_and_reconfiguration() -> None:
    dec = P.TextLineDecoder()
    rows = dec.feed(b"5,6\n1,2,3\n4\t5\t6\r\n7 8  9\nERR: no sensor\nx,y,z\n1,2\n", host_time=0.0)
    assert [r.tolist() for r in rows] == [[1, 2, 3], [4, 5, 6], [7, 8, 9]]
    assert dec.counters.discarded_lines == 1 and dec.counters.board_errors == 1 and dec.counters.bad_lines == 2
    assert dec.counters.last_board_error == "ERR: no sensor"
    rows = dec.feed(b"".join(b"%d,%d\n" % (i, i) for i in range(5)), host_time=1.0)  # the sketch now prints 2 values
    # "1,2" above was the first line of the new count; the fifth in a row switches: it and the next are kept
    assert dec.columns == 2 and dec.counters.column_changes == 1 and [r.tolist() for r in rows] == [[3, 3], [4, 4]]
    dec.feed(b"9" * 5000, host_time=2.0)  # a runaway line without newline
    assert dec.counters.oversize == 1
    assert dec.feed(b"99\n3,3\n", host_time=2.1)[0].tolist() == [3, 3]  # its tail is dropped, then lines resume


@FUZZ
@given(st.lists(st.binary(max_size=300), max_size=10))
def test_text_decoder_never_raises(chunks: list[bytes]) -> None:
    dec = P.TextLineDecoder()
    for c in chunks:
        for row in dec.feed(c, host_time=0.0):
            assert row.dtype == np.float32 and row.size == dec.columns
