"""Scenes the project draws itself (no data-set image is ever shipped): stand-ins for a camera in
``emoedge run --demo``, the bench and the tests. Each is a simple landscape whose colours lean a way
(a warm sunset over water, a grey storm, a bright meadow, a dark night street), so the estimates differ."""

from __future__ import annotations

import cv2
import numpy as np

PALETTES = {
    "sunset": ((40, 90, 250), (120, 60, 200), (90, 50, 30)),   # sky top, sky bottom, ground (BGR)
    "storm": ((70, 70, 70), (120, 120, 110), (40, 50, 40)),
    "meadow": ((235, 200, 120), (250, 230, 200), (40, 170, 60)),
    "night": ((40, 20, 10), (70, 40, 20), (20, 20, 20)),
}


def drawn_scene(kind: str = "sunset", seed: int = 0, size: tuple[int, int] = (240, 320)) -> np.ndarray:
    """One BGR uint8 frame of the named kind (``PALETTES``), varied by ``seed``."""
    rng = np.random.default_rng(seed)
    top, bottom, ground = (np.array(c, np.float32) for c in PALETTES[kind])
    h, w = size
    t = np.linspace(0.0, 1.0, h, dtype=np.float32)[:, None, None]
    img = (top * (1 - t) + bottom * t).repeat(w, axis=1)
    img = np.clip(img + rng.normal(0, 4, img.shape), 0, 255).astype(np.uint8)
    if kind in ("sunset", "meadow"):
        cv2.circle(img, (int(rng.integers(w // 4, 3 * w // 4)), int(h * 0.35)), int(rng.integers(18, 36)),
                   (80, 200, 255) if kind == "sunset" else (200, 250, 255), -1)
    horizon = int(h * rng.uniform(0.55, 0.7))
    pts = [[0, h]] + [[x, horizon + int(rng.integers(-25, 25))] for x in range(0, w + 1, 32)] + [[w, h]]
    cv2.fillPoly(img, [np.array(pts, np.int32)], tuple(int(c) for c in ground))
    if kind == "storm":
        for _ in range(3):
            x = int(rng.integers(20, w - 20))
            cv2.line(img, (x, 0), (x + int(rng.integers(-30, 30)), horizon), (230, 230, 255), 2)
    if kind == "night":
        for _ in range(8):
            cv2.circle(img, (int(rng.integers(0, w)), int(rng.integers(horizon, h))), 3, (60, 200, 255), -1)
    return cv2.GaussianBlur(img, (3, 3), 0)


def demo_scenes(count: int = 4, seed: int = 0) -> list[np.ndarray]:
    """``count`` frames cycling through the palettes."""
    kinds = list(PALETTES)
    return [drawn_scene(kinds[i % len(kinds)], seed + i) for i in range(count)]


def write_demo_video(path: str, count: int = 4, fps: float = 1.0, seed: int = 0) -> str:
    """The drawn scenes as a short MJPG video (``emoedge run --demo`` replays it in a loop as its scene camera)."""
    frames = demo_scenes(count, seed)
    h, w = frames[0].shape[:2]
    writer = cv2.VideoWriter(path, cv2.VideoWriter.fourcc(*"MJPG"), fps, (w, h))
    try:
        for frame in frames:
            writer.write(frame)
    finally:
        writer.release()
    return path
