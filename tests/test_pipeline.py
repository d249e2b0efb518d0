"""The pipeline with real ONNX Runtime sessions: windows never dropped, newest frame wins, tracks, batching, fusion."""

from __future__ import annotations

import os
import sys
import threading
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from edge.card import load_model
from edge.config import DeviceConfig
from edge.estimate import Estimate
from edge.fusion import softmax
from edge.pipeline import Pipeline
from edge.pipeline.windows import WindowBuffer
from edge.tracker import DETECT_NICE, FaceTracker
from firmware_bridge.sources.base import Sample
from tests.pipeline_helpers import (
    FER,
    RAVDESS,
    ListSource,
    bright_square_detector,
    face_frames,
    make_model,
    square_input,
)


def device(models: Path, sources: list[dict], **extra) -> DeviceConfig:
    names = {s["model"] for s in sources}
    return DeviceConfig.model_validate({
        "device_id": "t", "models": {n: {"path": str(models / n)} for n in names},
        "backend": {"threads": 1}, "sources": sources, **extra,
    })


def wait(cond, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond() and time.monotonic() < deadline:
        time.sleep(0.01)


def test_window_buffer_cuts_every_window_with_end_times() -> None:
    buf = WindowBuffer(size=10, hop=4)
    got = []
    data = np.arange(37, dtype=np.float32)
    for i in range(0, 37, 5):
        block = data[i : i + 5]
        got += buf.push(Sample("a", "audio", block, 10.0, host_time=100.0 + (i + len(block)) / 10.0))
    starts = [int(w[0]) for w, _ in got]
    # on the grid 0, 4, 8, ... every 4 samples; the newest window a block completes ends at that block's end
    # (blocks end at 5, 10, 15, ...): 4 -> 5, 8 -> 10, 12 -> 15, 16 stays (20 ends the block at 30), 24 -> 25
    assert starts == [0, 5, 10, 15, 16, 20, 25]
    for w, ts in got:
        assert np.array_equal(w, np.arange(w[0], w[0] + 10))
        assert ts == pytest.approx(100.0 + (w[-1] + 1) / 10.0)


def test_eeg_and_audio_windows_are_never_dropped_and_match_the_model(tmp_path: Path) -> None:
    models = tmp_path / "models"
    make_model(models, "eeg", 4 * 128, ["low_valence", "high_valence"], "eeg", window_s=1.0, seed=1)
    make_model(models, "speech", 4000, RAVDESS, "speech", window_s=0.25, seed=2)
    cfg = device(models, [
        {"name": "eeg", "kind": "replay", "path": "x", "model": "eeg", "hop_s": 0.25},
        {"name": "mic", "kind": "replay", "path": "x", "model": "speech", "hop_s": 0.1},
    ])
    rng = np.random.default_rng(0)
    eeg_blocks = [rng.standard_normal((4, 16)).astype(np.float32) for _ in range(80)]  # 10 s at 128 Hz
    mic_blocks = [rng.uniform(-1, 1, 1600).astype(np.float32) for _ in range(50)]  # 5 s at 16 kHz
    sources = {"eeg": ListSource("eeg", "eeg", eeg_blocks, 128.0, max_queue=4),
               "mic": ListSource("mic", "audio", mic_blocks, 16000.0, max_queue=4)}
    got: list[Estimate] = []
    pipe = Pipeline(cfg, sources=sources, on_estimate=got.append)
    pipe.start()
    wait(lambda: sum(e.source == "eeg" for e in got) >= 37 and sum(e.source == "mic" for e in got) >= 48)
    pipe.stop()
    eeg = [e for e in got if e.source == "eeg"]
    mic = [e for e in got if e.source == "mic"]
    assert len(eeg) == (1280 - 128) // 32 + 1  # every hop of 0.25 s, none dropped
    assert len(mic) == (80000 - 4000) // 1600 + 1
    assert all(a.ts < b.ts for a, b in zip(eeg, eeg[1:], strict=False))
    # the third EEG window is samples 64..191; its estimate must be the model's answer on exactly that
    window = np.concatenate(eeg_blocks, axis=1)[:, 64:192].reshape(1, -1)
    model = load_model(models / "eeg")
    import onnxruntime as ort

    logits = ort.InferenceSession(str(model.path)).run(None, {"x": window})[0]
    assert [eeg[2].probs[k] for k in ("low_valence", "high_valence")] == pytest.approx(softmax(logits)[0].tolist(), abs=1e-5)
    assert eeg[2].arousal is None and eeg[2].valence is not None
    assert mic[0].valence is not None and mic[0].arousal is not None
    stats = pipe.stats()
    assert stats["sources"]["eeg"]["dropped"] == 0 and stats["sources"]["mic"]["dropped"] == 0
    assert {"queue", "features", "infer", "capture_to_publish"} <= set(stats["sources"]["mic"]["latency_ms"])
    assert pipe.state is not None


def test_video_newest_frame_wins_and_counts_skips(tmp_path: Path) -> None:
    models = tmp_path / "models"
    make_model(models, "face", 256, FER, "face")
    cfg = device(models, [{"name": "cam", "kind": "camera", "model": "face", "detect_every": 1}])
    frames = face_frames(120, step=1)  # slow motion: a skip of up to ~50 frames under load keeps the track (IoU >= 0.3)

    crop = square_input()

    def slow_input(frame: np.ndarray, box):  # a face path slower than the camera
        time.sleep(0.01)
        return crop(frame, box)

    source = ListSource("cam", "video", frames, 30.0, interval=0.002, drop_oldest=True, max_queue=2)
    got: list[Estimate] = []
    pipe = Pipeline(cfg, sources={"cam": source}, detect=bright_square_detector, face_input=slow_input,
                    on_estimate=got.append)
    pipe.start()
    wait(lambda: source.emitted == len(frames))
    run = pipe.runs["cam"]
    # let the frames in flight finish (under load the face path may still hold one)
    wait(lambda: run.frames + run.slot.skipped + source.dropped >= len(frames), timeout=5.0)
    pipe.stop()
    assert run.received + source.dropped == len(frames)
    assert run.slot is not None and run.slot.skipped > 0
    # each frame either went through the face path (an estimate when a face was tracked in it) or was skipped
    assert run.frames + run.slot.skipped + source.dropped == len(frames)
    assert 0 < len(got) <= run.frames
    assert pipe.stats()["sources"]["cam"]["dropped"] == run.slot.skipped + source.dropped
    assert {e.track_id for e in got} == {1}


def test_background_detection_never_holds_up_a_frame() -> None:
    frames = face_frames(30, step=2)

    def slow_detect(small: np.ndarray):
        time.sleep(0.2)
        return bright_square_detector(small)

    tracker = FaceTracker(slow_detect, detect_every=5, scale=0.5, background=True)
    ids, times = [], []
    for frame in frames:
        t0 = time.perf_counter()
        tracks = tracker.update(frame)
        times.append(time.perf_counter() - t0)
        ids.append([t.id for t in tracks])
        time.sleep(1 / 30)
    tracker.close()
    assert max(times) < 0.15  # the 200 ms detection ran beside the frames, not in them
    assert ids[0] == [] and ids[-1] == [1]  # found once the first detection came back, one id throughout
    assert all(i in ([], [1]) for i in ids)
    assert 2 <= tracker.detections <= 6


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="per-thread niceness is Linux's")
def test_background_detector_runs_niced_and_the_callers_priority_is_untouched() -> None:
    own = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
    tracker = FaceTracker(bright_square_detector, background=True, detect_nice=5)
    niced = FaceTracker(bright_square_detector, background=True)
    plain = FaceTracker(bright_square_detector, background=True, detect_nice=0)
    try:
        for t, by in ((tracker, 5), (niced, DETECT_NICE), (plain, 0)):
            assert t._worker is not None and t._worker.native_id is not None
            assert os.getpriority(os.PRIO_PROCESS, t._worker.native_id) == min(19, own + by)
        assert os.getpriority(os.PRIO_PROCESS, threading.get_native_id()) == own
        frames = face_frames(6, step=1)
        for frame in frames:  # the niced detector still finds the face
            tracker.update(frame)
            time.sleep(0.05)
        assert [t.id for t in tracker.update(frames[-1])] == [1]
    finally:
        for t in (tracker, niced, plain):
            t.close()


def test_tracker_keeps_the_id_and_follows_between_detections() -> None:
    frames = face_frames(20, step=4)
    calls = []

    def detect(small: np.ndarray):
        calls.append(1)
        return bright_square_detector(small)

    tracker = FaceTracker(detect, detect_every=5, scale=0.5)
    boxes = []
    for frame in frames:
        tracks = tracker.update(frame)
        assert [t.id for t in tracks] == [1]
        boxes.append(tracks[0].box)
    assert len(calls) == 4  # frames 0, 5, 10, 15
    for i, (x, *_) in enumerate(boxes):
        assert abs(x - (100 + 4 * i)) <= 4, (i, boxes[i])  # followed between detections, not frozen
    # a face that leaves is dropped after max_missed detections; a new one gets a new id
    empty = np.full_like(frames[0], 20)
    for _ in range(3 * 5):
        tracker.update(empty)
    assert tracker.tracks == []
    assert [t.id for t in tracker.update(frames[0])] == [2]


def test_faces_in_one_frame_run_as_one_batch(tmp_path: Path) -> None:
    models = tmp_path / "models"
    make_model(models, "face", 256, FER, "face")
    cfg = device(models, [{"name": "cam", "kind": "camera", "model": "face", "detect_every": 1}])
    frame = face_frames(1)[0].copy()
    frame[300:396, 400:496] = frame[150:246, 100:196]  # a second face
    source = ListSource("cam", "video", [frame] * 5, 30.0, interval=0.05, drop_oldest=True)
    got: list[Estimate] = []
    pipe = Pipeline(cfg, sources={"cam": source}, detect=bright_square_detector, face_input=square_input(),
                    on_estimate=got.append)
    batches: list[int] = []
    runner = pipe.runs["cam"].runner
    real_infer = runner.infer
    runner.infer = lambda feed: (batches.append(len(feed["x"])), real_infer(feed))[1]  # type: ignore[method-assign]
    pipe.start()
    wait(lambda: len(got) >= 6)
    pipe.stop()
    assert len(batches) >= 3 and set(batches) == {2}  # both faces of a frame in one run
    assert sorted({e.track_id for e in got}) == [1, 2]
    assert pipe.stats()["sources"]["cam"]["faces"] == len(got)


def test_disabling_a_source_stops_its_estimates(tmp_path: Path) -> None:
    models = tmp_path / "models"
    make_model(models, "eeg", 4 * 128, ["low_valence", "high_valence"], "eeg", window_s=1.0)
    cfg = device(models, [{"name": "eeg", "kind": "replay", "path": "x", "model": "eeg"}])
    rng = np.random.default_rng(0)
    source = ListSource("eeg", "eeg", [rng.standard_normal((4, 16)).astype(np.float32) for _ in range(400)], 128.0,
                        interval=0.002)
    got: list[Estimate] = []
    pipe = Pipeline(cfg, sources={"eeg": source}, on_estimate=got.append)
    pipe.start()
    wait(lambda: len(got) >= 3)
    pipe.set_enabled("eeg", False)
    time.sleep(0.3)  # a batch that was already past the check may still land
    n = len(got)
    time.sleep(0.3)
    assert len(got) == n
    pipe.set_enabled("eeg", True)
    wait(lambda: len(got) > n + 2)
    pipe.stop()
    assert len(got) > n


def test_output_reader_multi_head_labels_and_va_output() -> None:
    from edge.card import ModelCard
    from edge.pipeline.readout import OutputReader

    card = ModelCard.model_validate({
        "name": "eeg", "version": "1", "modality": "eeg", "parameters": 1,
        "labels": ["valence:negative", "valence:positive", "arousal:low", "arousal:high"],
        "inputs": [{"name": "band_power", "shape": ["batch", 160]}],
        "outputs": [{"name": "valence_logits", "shape": ["batch", 2], "meaning": "logits over valence"},
                    {"name": "arousal_logits", "shape": ["batch", 2], "meaning": "logits over arousal"},
                    {"name": "va", "shape": ["batch", 2]}, {"name": "embedding", "shape": ["batch", 36]}],
        "features": {"recipe": "edge.features.eeg.band_power"},
        "training": {"data": "x", "terms": "x"},
    })
    reader = OutputReader(card)
    out = {"valence_logits": np.array([[0.0, 2.0]], np.float32), "arousal_logits": np.array([[1.0, 1.0]], np.float32),
           "va": np.array([[0.76, 0.0]], np.float32), "embedding": np.zeros((1, 36), np.float32)}
    [(probs, label, conf, v, a, ood)] = reader.read(out)
    assert ood is None  # no [ood] in the card
    assert label == "valence:positive arousal:low"  # a tie goes to the first
    assert probs["valence:positive"] == pytest.approx(1 / (1 + np.exp(-2)))
    assert probs["arousal:low"] == pytest.approx(0.5)
    assert conf == pytest.approx((2 * probs["valence:positive"] - 1 + 0.0) / 2)
    assert (v, a) == (pytest.approx(0.76), 0.0)
    del out["va"]
    reader.va_output = None
    [(_, _, _, v2, a2, _)] = reader.read(out)
    assert v2 == pytest.approx(0.6 * (2 * probs["valence:positive"] - 1)) and a2 == pytest.approx(0.0)


def test_the_pipeline_closes_what_it_opened(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A context manager: every runner and BLAS limit is released on exit, and when a later source cannot be
    built, the runners of the sources built before it are closed (not leaked)."""
    from threadpoolctl import threadpool_info

    from edge.errors import ConfigError
    from edge.pipeline import core

    models = tmp_path / "models"
    make_model(models, "speech", 1600, RAVDESS, "speech", window_s=0.1)
    make_model(models, "nowindow", 1600, RAVDESS, "speech")  # no window_s in its card or the config
    opened: list = []
    real = core.open_source_run

    def spy(*args, **kwargs):  # type: ignore[no-untyped-def]
        opened.append(args[1].name)
        run = real(*args, **kwargs)
        runs.append(run)
        return run

    runs: list = []
    monkeypatch.setattr(core, "open_source_run", spy)
    blocks = [np.zeros(1600, np.float32)] * 5
    ok = {"name": "mic", "kind": "replay", "path": "x", "model": "speech"}
    bad = {"name": "mic2", "kind": "replay", "path": "x", "model": "nowindow"}
    with pytest.raises(ConfigError, match="no window_s"):
        Pipeline(device(models, [ok, bad]), sources={"mic": ListSource("mic", "audio", blocks, 16000.0),
                                                     "mic2": ListSource("mic2", "audio", blocks, 16000.0)})
    assert opened == ["mic", "mic2"] and len(runs) == 1 and not runs[0].runner.is_active

    runs.clear()
    blas_before = [(i["user_api"], i["num_threads"]) for i in threadpool_info()]
    cv2.setNumThreads(3)
    got: list[Estimate] = []
    with Pipeline(device(models, [ok]), sources={"mic": ListSource("mic", "audio", blocks, 16000.0)},
                  on_estimate=got.append) as pipe:
        assert pipe.runs["mic"].runner.is_active
        assert cv2.getNumThreads() == 1  # face detection keeps to one core while the pipeline runs
        wait(lambda: len(got) >= 9)
    assert len(got) == (5 * 1600 - 1600) // 800 + 1 and not runs[0].runner.is_active  # every half-window hop
    assert [(i["user_api"], i["num_threads"]) for i in threadpool_info()] == blas_before
    assert cv2.getNumThreads() == 3  # and gives the process its setting back
