"""The face path with the real detector and crop (edge.features.face) on frames carrying FER2013 faces."""

from __future__ import annotations

import time
from pathlib import Path

from edge.config import DeviceConfig
from edge.estimate import Estimate
from edge.pipeline import Pipeline
from tests.pipeline_helpers import ListSource, make_face_model


def test_faces_detected_at_reduced_resolution_and_tracked(tmp_path: Path, data_dir: Path) -> None:
    from edge.bench.e2e import video_frames

    frames, what = video_frames(count=60)
    assert "FER2013" in what, what
    models = tmp_path / "models"
    make_face_model(models)
    cfg = DeviceConfig.model_validate({
        "device_id": "faces", "models": {"face": {"path": str(models / "face")}}, "backend": {"threads": 1},
        "sources": [{"name": "cam", "kind": "camera", "model": "face", "detect_every": 5}],
    })
    source = ListSource("cam", "video", frames, 30.0, interval=1 / 30, drop_oldest=True, max_queue=2)
    got: list[Estimate] = []
    pipe = Pipeline(cfg, sources={"cam": source}, on_estimate=got.append).start()
    deadline = time.monotonic() + 15
    while source.emitted < len(frames) and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.2)
    pipe.stop()
    run = pipe.runs["cam"]
    assert run.tracker is not None
    assert run.tracker.detections <= run.tracker.frames // 5 + 1  # the detector ran on every 5th frame only
    assert len(got) >= 20, pipe.stats()
    for est in got:
        x, y, w, h = est.box or (0, 0, 0, 0)
        assert 180 <= x + w / 2 <= 460 and 180 <= y + h / 2 <= 300, est.box  # the face sits around (320, 240)
        assert set(est.probs) == {"angry", "disgust", "fear", "happy", "sad", "surprise", "neutral"}
    # one face a second: at most a new track per face shown (two), not one per detection
    assert len({e.track_id for e in got}) <= 3
