"""Benchmarks of the serial path (run with ``--benchmark-enable`` for numbers; by default each runs once as a test).

- decoder throughput on a realistic EEG stream (32 channels, int24, 128 Hz, 8 samples a frame, as the
  simulator sends it), against the 921,600-baud line rate (92.16 kB/s of payload bytes at 10 bits a
  byte) and against a floor measured in the same run: COBS decoding and CRC alone, with no decoder
  around them;
- latency from the last byte of a frame written to a pseudo-terminal to the Sample leaving the source.
"""

from __future__ import annotations

import os
import time
import zlib

import pytest
from cobs import cobs

from firmware_bridge import protocol as P
from firmware_bridge.simulated_boards import EegBoardSimulator
from firmware_bridge.simulator import open_pty
from firmware_bridge.sources.serial import SerialBoardSource

LINE_RATE = 921600 / 10  # bytes per second on the wire: 8 data bits + start + stop
CHUNK = 4096  # what one serial read returns under load


@pytest.fixture(scope="module")
def eeg_stream() -> bytes:
    sim = EegBoardSimulator(-1, seed=0)
    frames = []
    for i in range(2400):  # 150 s of EEG, ~1.9 MB
        t = i * sim.block / sim.rate
        if i % 16 == 0:
            frames.append(sim.make_info(t))
            frames.append(sim.encoder.heartbeat(sim.board_us(t)))
        frames.append(sim.make_block(i, t))
    return b"".join(frames)


def decode_stream(stream: bytes) -> P.FrameDecoder:
    decoder = P.FrameDecoder()
    for i in range(0, len(stream), CHUNK):
        for frame in decoder.feed(stream[i:i + CHUNK], 0.0):
            if isinstance(frame.body, P.EegBlock):
                frame.body.microvolts()  # what the source does with every block
    return decoder


def cobs_crc_floor(stream: bytes) -> int:
    good = 0
    for segment in stream.split(b"\0"):
        if segment:
            raw = cobs.decode(segment)
            good += zlib.crc32(raw[:-4]) == int.from_bytes(raw[-4:], "little")
    return good




@pytest.mark.benchmark(group="decode")
def test_decoder_throughput(benchmark, eeg_stream: bytes) -> None:
    decoder = benchmark(decode_stream, eeg_stream)
    assert decoder.counters.frames_by_type["eeg"] == 2400 and decoder.counters.crc_errors == decoder.counters.lost_frames == 0
    start = time.perf_counter()
    decode_stream(eeg_stream)
    seconds = benchmark.stats.stats.mean if benchmark.stats else time.perf_counter() - start
    mb_s = len(eeg_stream) / seconds / 1e6
    benchmark.extra_info.update({"MB_per_s": round(mb_s, 2), "x_line_rate_921600": round(mb_s * 1e6 / LINE_RATE, 1),
                                 "bytes": len(eeg_stream)})
    print(f"\ndecoder: {mb_s:.1f} MB/s = {mb_s * 1e6 / LINE_RATE:.0f} x the 921600-baud line rate")
    assert mb_s * 1e6 > 10 * LINE_RATE  # a large margin on one core


@pytest.mark.benchmark(group="decode")
def test_floor_cobs_and_crc_only(benchmark, eeg_stream: bytes) -> None:
    good = benchmark(cobs_crc_floor, eeg_stream)
    assert good == 2400 + 2 * 150
    if benchmark.stats:
        mb_s = len(eeg_stream) / benchmark.stats.stats.mean / 1e6
        benchmark.extra_info.update({"MB_per_s": round(mb_s, 2), "x_line_rate_921600": round(mb_s * 1e6 / LINE_RATE, 1)})


@pytest.mark.benchmark(group="latency")
def test_latency_last_byte_to_sample(benchmark) -> None:
    pair = open_pty()
    sim = EegBoardSimulator(-1, seed=1)
    frames = [sim.make_block(i, i * sim.block / sim.rate) for i in range(4000)]
    it = iter(frames)
    try:
        with SerialBoardSource("eeg", port=pair.slave_path) as source:
            assert source.link.wait_connected(5)

            def one_frame() -> float:
                os.write(pair.master_fd, next(it))  # the frame's last byte is written when this returns
                sample = source.read(timeout=2)
                assert sample is not None
                return sample.host_time

            for _ in range(20):
                one_frame()  # without --benchmark-enable, pedantic runs once: these still check the path
            benchmark.pedantic(one_frame, rounds=300, warmup_rounds=20)
            stats = source.stats()
    finally:
        pair.close()
    assert stats["lost_frames"] == 0 and stats["crc_errors"] == 0
    if benchmark.stats:
        s = benchmark.stats.stats
        benchmark.extra_info.update({"median_ms": round(s.median * 1e3, 3), "max_ms": round(s.max * 1e3, 3)})
        print(f"\nlatency last byte -> Sample: median {s.median * 1e3:.3f} ms, max {s.max * 1e3:.3f} ms")
