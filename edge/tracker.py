"""Face tracks between detections: detect at reduced resolution every N frames, follow in between.

Detection (a Haar cascade in ``edge.features.face``) is the expensive step, so it runs on a
down-scaled frame every ``detect_every`` frames. Between detections each track follows its face by
template matching in a small search window of the reduced gray frame. Detections are matched to
tracks by overlap (IoU), so a face keeps its ``track_id`` while it stays in view.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass

import cv2
import numpy as np

Box = tuple[int, int, int, int]  # x, y, w, h in full-resolution pixels
DetectFn = Callable[[np.ndarray], list[Box]]


@dataclass
class Track:
    id: int
    box: Box
    missed: int = 0
    template: np.ndarray | None = None  # reduced-resolution gray patch of the face


def iou(a: Box, b: Box) -> float:
    ax2, ay2, bx2, by2 = a[0] + a[2], a[1] + a[3], b[0] + b[2], b[1] + b[3]
    iw = max(0, min(ax2, bx2) - max(a[0], b[0]))
    ih = max(0, min(ay2, by2) - max(a[1], b[1]))
    inter = iw * ih
    union = a[2] * a[3] + b[2] * b[3] - inter
    return inter / union if union > 0 else 0.0


class FaceTracker:
    """``update(frame)`` -> the current tracks (largest face first)."""

    def __init__(
        self, detect: DetectFn, detect_every: int = 5, scale: float = 0.5, max_missed: int = 2,
        min_iou: float = 0.3, min_match: float = 0.5,
    ) -> None:
        self.detect = detect
        self.detect_every = max(1, detect_every)
        self.scale = scale
        self.max_missed = max_missed
        self.min_iou = min_iou
        self.min_match = min_match
        self.tracks: list[Track] = []
        self.frames = 0
        self.detections = 0
        self._ids = itertools.count(1)

    def _small_gray(self, frame: np.ndarray) -> np.ndarray:
        gray = cv2.cvtColor(frame, cv2.COLOR_BGR2GRAY) if frame.ndim == 3 else frame
        if self.scale == 1.0:
            return gray
        return cv2.resize(gray, None, fx=self.scale, fy=self.scale, interpolation=cv2.INTER_AREA)

    def update(self, frame: np.ndarray) -> list[Track]:
        small = self._small_gray(frame)
        if self.frames % self.detect_every == 0:
            self._detect(small)
        else:
            self._follow(small)
        self.frames += 1
        return sorted(self.tracks, key=lambda t: t.box[2] * t.box[3], reverse=True)

    def _to_full(self, box: Box) -> Box:
        s = 1.0 / self.scale
        return (int(round(box[0] * s)), int(round(box[1] * s)), int(round(box[2] * s)), int(round(box[3] * s)))

    def _to_small(self, box: Box) -> Box:
        s = self.scale
        return (int(box[0] * s), int(box[1] * s), max(1, int(box[2] * s)), max(1, int(box[3] * s)))

    def _patch(self, small: np.ndarray, box: Box) -> np.ndarray | None:
        x, y, w, h = self._to_small(box)
        patch = small[max(0, y) : y + h, max(0, x) : x + w]
        return patch.copy() if patch.size and patch.shape[0] >= 4 and patch.shape[1] >= 4 else None

    def _detect(self, small: np.ndarray) -> None:
        self.detections += 1
        boxes = [self._to_full(b) for b in self.detect(small)]
        pairs = sorted(
            ((iou(t.box, b), ti, bi) for ti, t in enumerate(self.tracks) for bi, b in enumerate(boxes)), reverse=True
        )
        used_t: set[int] = set()
        used_b: set[int] = set()
        for score, ti, bi in pairs:
            if score < self.min_iou or ti in used_t or bi in used_b:
                continue
            used_t.add(ti)
            used_b.add(bi)
            track = self.tracks[ti]
            track.box, track.missed = boxes[bi], 0
            track.template = self._patch(small, track.box)
        for ti, track in enumerate(self.tracks):
            if ti not in used_t:
                track.missed += 1
        self.tracks = [t for t in self.tracks if t.missed <= self.max_missed]
        for bi, box in enumerate(boxes):
            if bi not in used_b:
                self.tracks.append(Track(next(self._ids), box, 0, self._patch(small, box)))

    def _follow(self, small: np.ndarray) -> None:
        for track in self.tracks:
            if track.template is None:
                continue
            th, tw = track.template.shape
            x, y, w, h = self._to_small(track.box)
            mx, my = max(4, w // 2), max(4, h // 2)
            x0, y0 = max(0, x - mx), max(0, y - my)
            region = small[y0 : min(small.shape[0], y + h + my), x0 : min(small.shape[1], x + w + mx)]
            if region.shape[0] < th or region.shape[1] < tw:
                continue
            result = cv2.matchTemplate(region, track.template, cv2.TM_CCOEFF_NORMED)
            _, best, _, (bx, by) = cv2.minMaxLoc(result)
            if best >= self.min_match:
                fx, fy = self._to_full((x0 + bx, y0 + by, tw, th))[:2]
                track.box = (fx, fy, track.box[2], track.box[3])
