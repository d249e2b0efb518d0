"""The C reference encoder and the Python codec agree on every test vector.

The committed ``firmware_bridge/firmware/test_vectors.json`` holds the Python side to the format even
where gcc is absent; where gcc is present the C encoder is compiled and must reproduce that file.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from firmware_bridge import protocol as P

FIRMWARE = Path(__file__).resolve().parent.parent / "firmware_bridge" / "firmware"
VECTORS = json.loads((FIRMWARE / "test_vectors.json").read_text())
CFLAGS = ["-std=c99", "-Wall", "-Wextra", "-Werror", "-pedantic", "-O2"]


def _encode(v: dict) -> bytes:
    enc = P.FrameEncoder(sensor=v["sensor"], seq=v["seq"])
    enc.first = bool(v["flags"] & P.FLAG_FIRST)
    enc.overflow = bool(v["flags"] & P.FLAG_OVERFLOW)
    kind, t = v["type"], v["t_us"]
    if kind == "heartbeat":
        return enc.heartbeat(t, v["board_dropped"])
    if kind == "info":
        names = v["channel_names"].split(",") if v["channel_names"] else []
        return enc.info(t, v["format"], v["channels"], v["sample_rate"], v["scale"], v["device"], names)
    if kind == "eeg":
        values = np.array(v["values"], dtype=np.float64 if v["format"] == P.FMT_FLOAT32 else np.int64)
        counts = values.reshape(v["samples"], v["channels"]).T
        return enc.eeg(t, counts, v["sample_rate"], v["scale"], v["format"])
    if kind == "audio":
        return enc.audio(t, np.array(v["values"], dtype=np.int16), v["sample_rate"])
    if kind == "log":
        return enc.log(t, v["text"], v["level"])
    raise AssertionError(kind)


def test_crc_check_value_matches_c() -> None:
    assert VECTORS["crc32_check"] == f"{P.crc32(b'123456789'):08x}" == "cbf43926"
    assert VECTORS["version"] == P.VERSION


@pytest.mark.parametrize("v", VECTORS["vectors"], ids=lambda v: v["name"])
def test_python_encoder_writes_the_c_bytes(v: dict) -> None:
    assert _encode(v).hex() == v["hex"]


@pytest.mark.parametrize("v", VECTORS["vectors"], ids=lambda v: v["name"])
def test_python_decoder_reads_every_vector_exactly(v: dict) -> None:
    decoder = P.FrameDecoder()
    frames = decoder.feed(bytes.fromhex(v["hex"]), host_time=1.0)
    assert len(frames) == 1, decoder.stats()
    f = frames[0]
    assert (f.type_name, f.sensor, f.seq, f.flags, f.board_time_us) == (v["type"], v["sensor"], v["seq"], v["flags"], v["t_us"])
    body = f.body
    if v["type"] == "eeg":
        assert isinstance(body, P.EegBlock)
        assert (body.sample_format, body.channels, body.samples) == (v["format"], v["channels"], v["samples"])
        assert body.sample_rate == np.float32(v["sample_rate"]) and body.scale == np.float32(v["scale"])
        expected = np.array(v["values"], dtype=np.float64).reshape(v["samples"], v["channels"]).T
        if v["format"] == P.FMT_INT16:
            expected = np.clip(expected, -32768, 32767)
        elif v["format"] == P.FMT_INT24:
            expected = np.clip(expected, P.INT24_MIN, P.INT24_MAX)
        else:
            expected = expected.astype(np.float32)
        np.testing.assert_array_equal(body.counts(), expected)
        np.testing.assert_allclose(body.microvolts(), expected * np.float32(v["scale"]), rtol=1e-6)
    elif v["type"] == "audio":
        assert isinstance(body, P.AudioBlock) and body.sample_rate == v["sample_rate"]
        np.testing.assert_array_equal(body.pcm(), v["values"])
        assert body.floats().min() >= -1.0 and body.floats().max() < 1.0
    elif v["type"] == "info":
        assert isinstance(body, P.DeviceInfo)
        assert body.name == v["device"] and ",".join(body.channel_names) == v["channel_names"]
        assert (body.sample_format, body.channels, body.sample_rate) == (v["format"], v["channels"], v["sample_rate"])
    elif v["type"] == "heartbeat":
        assert isinstance(body, P.Heartbeat) and body.board_dropped == v["board_dropped"]
    else:
        assert isinstance(body, P.LogText) and (body.level, body.text) == (v["level"], v["text"])
    assert decoder.counters.crc_errors == decoder.counters.resyncs == decoder.counters.lost_frames == 0


def test_all_vectors_as_one_stream_in_odd_chunks() -> None:
    stream = b"".join(bytes.fromhex(v["hex"]) for v in VECTORS["vectors"])
    decoder = P.FrameDecoder()
    frames = []
    for i in range(0, len(stream), 7):
        frames += decoder.feed(stream[i:i + 7], host_time=float(i))
    assert [f.seq for f in frames] == [v["seq"] for v in VECTORS["vectors"]]
    assert decoder.counters.crc_errors == decoder.counters.framing_errors == decoder.counters.resyncs == 0
    assert decoder.counters.board_resets == 1  # the audio encoder starts afresh with FLAG_FIRST


def test_vectors_cover_the_cobs_block_boundary() -> None:
    """Runs of 254 non-zero bytes are where COBS implementations disagree: the vectors must hold them."""
    import re

    from cobs import cobs

    runs = []
    for v in VECTORS["vectors"]:
        wire = bytes.fromhex(v["hex"])
        raw = cobs.decode(wire[1:-1])
        assert len(wire) <= len(raw) + len(raw) // 254 + 3  # EMOEDGE_ENCODED_SIZE is enough
        runs += [len(m) for m in re.findall(rb"[^\x00]+", raw)]
    assert {253, 254, 255} <= set(runs), sorted(set(runs))[-10:]


def _compile(tmp_path: Path, *sources: str, name: str = "prog") -> Path:
    gcc = shutil.which("gcc")
    if gcc is None:
        pytest.skip("gcc not found: the C encoder is checked only through the committed vectors")
    exe = tmp_path / name
    subprocess.run([gcc, *CFLAGS, *[str(FIRMWARE / s) for s in sources], "-o", str(exe)], check=True,
                   capture_output=True, text=True)
    return exe


def test_c_encoder_reproduces_the_committed_vectors(tmp_path: Path) -> None:
    exe = _compile(tmp_path, "emoedge_frame.c", "test_vectors.c", name="test_vectors")
    out = subprocess.run([str(exe)], check=True, capture_output=True, text=True).stdout
    fresh = json.loads(out)
    assert fresh == VECTORS, "C output differs from test_vectors.json: regenerate it and review the diff"
    assert fresh["rejects"] == {"buffer_too_small": 0, "payload_too_large": 0, "bad_format": 0,
                                "seq_after_rejects": 2}


def test_c_encoder_has_no_heap_and_builds_standalone(tmp_path: Path) -> None:
    """Compiles the encoder alone as an object and checks it calls nothing but memcpy/strlen/memset."""
    gcc = shutil.which("gcc")
    nm = shutil.which("nm")
    if gcc is None or nm is None:
        pytest.skip("gcc or nm not found")
    obj = tmp_path / "emoedge_frame.o"
    subprocess.run([gcc, *CFLAGS, "-Os", "-c", str(FIRMWARE / "emoedge_frame.c"), "-o", str(obj)], check=True)
    undefined = subprocess.run([nm, "-u", str(obj)], check=True, capture_output=True, text=True).stdout.split()
    imported = {s for s in undefined if s not in ("U",)}
    assert imported <= {"memcpy", "strlen", "memset"}, imported
    size = subprocess.run(["size", str(obj)], capture_output=True, text=True).stdout.splitlines()[-1].split()
    assert int(size[0]) < 4096, f"text segment {size[0]} bytes"
