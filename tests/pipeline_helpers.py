"""Test helpers for the pipeline: real ONNX model folders with cards, and a Source that emits prepared samples."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from firmware_bridge.sources.base import Sample, Source
from tests.conftest import make_linear_onnx

RAVDESS = ["neutral", "calm", "happy", "sad", "angry", "fearful", "disgust", "surprised"]
FER = ["angry", "disgust", "fear", "happy", "sad", "surprise", "neutral"]


def make_model(root: Path, name: str, n_in: int, labels: list[str], modality: str, window_s: float | None = None,
               seed: int = 0) -> Path:
    """models/<name>/ with a linear ONNX model (logits = x W + b) and a card that matches it."""
    folder = root / name
    folder.mkdir(parents=True, exist_ok=True)
    make_linear_onnx(folder / "model.onnx", n_in=n_in, n_out=len(labels), seed=seed)
    window = f"window_s = {window_s}\n" if window_s else ""
    (folder / "card.toml").write_text(
        f'name = "{name}"\nversion = "0.0.1"\nmodality = "{modality}"\nlabels = {labels!r}\nparameters = {n_in * len(labels)}\n'
        f'\n[[inputs]]\nname = "x"\nshape = ["batch", {n_in}]\ndtype = "float32"\n{window}'
        f'\n[[outputs]]\nname = "logits"\nshape = ["batch", {len(labels)}]\ndtype = "float32"\nmeaning = "logits over labels"\n'
        f'\n[features]\nrecipe = "identity"\n'
        f'\n[training]\ndata = "random weights made in the test"\nterms = "none"\n'.replace("'", '"')
    )
    return folder


class ListSource(Source):
    """Emits prepared blocks, paced at ``interval`` seconds (0: as fast as the queue takes them)."""

    def __init__(self, name: str, kind: str, blocks: list[np.ndarray], rate: float, interval: float = 0.0,
                 drop_oldest: bool = False, max_queue: int = 256) -> None:
        super().__init__(name, max_queue=max_queue)
        self.kind = kind  # type: ignore[assignment]
        self.blocks = blocks
        self.rate = rate
        self.interval = interval
        self.drop_oldest = drop_oldest
        self.emitted = 0

    def _run(self) -> None:
        next_t = time.perf_counter()
        for i, block in enumerate(self.blocks):
            if self.stopped:
                return
            if self.interval:
                next_t += self.interval
                time.sleep(max(0.0, next_t - time.perf_counter()))
            self._emit(Sample(self.name, self.kind, block, self.rate, time.time(), seq=i), drop_oldest=self.drop_oldest)  # type: ignore[arg-type]
            self.emitted += 1
        while not self.stopped:  # a live source stays open until stopped
            time.sleep(0.01)


def face_frames(n: int, width: int = 640, height: int = 480, step: int = 3) -> list[np.ndarray]:
    """Dark frames with one bright 'face' square moving right by ``step`` px a frame, with some texture."""
    rng = np.random.default_rng(0)
    texture = rng.integers(120, 255, (96, 96), dtype=np.uint8)
    frames = []
    for i in range(n):
        frame = np.full((height, width, 3), 20, np.uint8)
        x = 100 + i * step
        frame[150:246, x : x + 96] = texture[:, :, None]
        frames.append(frame)
    return frames


def bright_square_detector(small: np.ndarray) -> list[tuple[int, int, int, int]]:
    """A real (if simple) detector for face_frames: the bounding box of the bright pixels."""
    import cv2

    mask = (small > 100).astype(np.uint8)
    n, _, stats, _ = cv2.connectedComponentsWithStats(mask)
    return [tuple(int(v) for v in stats[i, :4]) for i in range(1, n) if stats[i, 4] > 50]  # type: ignore[misc]


def square_input(size: int = 16):
    import cv2

    def face_input(frame: np.ndarray, box: tuple[int, int, int, int]) -> np.ndarray:
        x, y, w, h = box
        crop = cv2.cvtColor(frame[max(0, y) : y + h, max(0, x) : x + w], cv2.COLOR_BGR2GRAY)
        return (cv2.resize(crop, (size, size)).astype(np.float32) / 127.5 - 1.0).reshape(-1)

    return face_input
