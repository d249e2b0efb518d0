"""Face tracks between detections: detect at reduced resolution every N frames, follow in between.

Detection (a Haar cascade in ``edge.features.face``) is the expensive step, so it runs on a
down-scaled frame every ``detect_every`` frames. Between detections each track follows its face by
template matching in a small search window of the reduced gray frame. Detections are matched to
tracks by overlap (IoU), so a face keeps its ``track_id`` while it stays in view.

With ``background=True`` the detector runs in its own thread (OpenCV releases the GIL), so a slow
detection never holds up a frame: its result is applied to the tracks when it is ready (a frame or
two later, close enough for the overlap match), and frames keep flowing at the tracking cost. That
thread also runs at a lower scheduling priority (``detect_nice``): a detection is background work that
may finish a few milliseconds later, while the threads that carry a window to the broker may not.
"""

from __future__ import annotations

import itertools
import logging
import os
import queue
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass

import cv2
import numpy as np

Box = tuple[int, int, int, int]  # x, y, w, h in full-resolution pixels
DetectFn = Callable[[np.ndarray], list[Box]]
DETECT_NICE = 10  # the background detector's niceness above the process's own (Linux: per thread)

log = logging.getLogger(__name__)


def lower_thread_priority(native_id: int, by: int) -> bool:
    """Raise one thread's niceness by ``by`` (never needs privileges); False where the OS has no per-thread nice
    (anywhere but Linux, where a thread id given to setpriority could name another process).

    On one busy core, a 20-30 ms Haar detection otherwise shares the CPU evenly with the reading, inference and
    publishing threads, and every window waits behind it. ``taskset -c 0 emoedge bench e2e --duration 60``, three
    interleaved pairs (AMD EPYC Zen 4), p99 without -> with the detector niced: EEG 19.8-22.0 -> 11.4-15.3 ms,
    microphone 18.7-27.2 -> 14.8-18.5 ms, camera 17.7-20.1 -> 11.9-14.6 ms (p50s fell by a third).
    """
    if by <= 0 or not sys.platform.startswith("linux"):
        return False
    try:
        now = os.getpriority(os.PRIO_PROCESS, native_id)
        os.setpriority(os.PRIO_PROCESS, native_id, min(19, now + by))
    except OSError as exc:  # a thread that already ended, or a sandbox that forbids it
        log.debug("could not lower the priority of thread %d: %s", native_id, exc)
        return False
    return True


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
        min_iou: float = 0.3, min_match: float = 0.5, background: bool = False, detect_nice: int = DETECT_NICE,
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
        self.background = background
        self._jobs: queue.Queue[np.ndarray | None] = queue.Queue(maxsize=1)
        self._done: list[tuple[np.ndarray, list[Box]]] = []
        self._busy = False
        self._lock = threading.Lock()
        self._worker: threading.Thread | None = None
        if background:
            self._worker = threading.Thread(target=self._detect_loop, name="face-detect", daemon=True)
            self._worker.start()
            if self._worker.native_id is not None:
                lower_thread_priority(self._worker.native_id, detect_nice)

    def _small_gray(self, frame: np.ndarray) -> np.ndarray:
        gray = cv2.cvtColor(frame, cv2.COLOR_BGR2GRAY) if frame.ndim == 3 else frame
        if self.scale == 1.0:
            return gray
        return cv2.resize(gray, None, fx=self.scale, fy=self.scale, interpolation=cv2.INTER_AREA)

    def update(self, frame: np.ndarray) -> list[Track]:
        small = self._small_gray(frame)
        if not self.background:
            if self.frames % self.detect_every == 0:
                self._detect(small)
            else:
                self._follow(small)
        else:
            with self._lock:
                done, self._done = self._done, []
            for detected_on, boxes in done:
                self._apply(detected_on, boxes)
            self._follow(small)
            if self.frames % self.detect_every == 0 and not self._busy:
                self._busy = True
                self._jobs.put(small)
        self.frames += 1
        return sorted(self.tracks, key=lambda t: t.box[2] * t.box[3], reverse=True)

    def _detect_loop(self) -> None:
        while True:
            small = self._jobs.get()
            if small is None:
                return
            try:
                boxes = self.detect(small)
            except Exception:  # a failed detection is a frame without news, not a dead tracker
                boxes = None
            with self._lock:
                if boxes is not None:
                    self._done.append((small, boxes))
                self._busy = False

    def close(self) -> None:
        """Stop the background detector (if any)."""
        if self._worker is not None:
            try:
                self._jobs.put_nowait(None)
            except queue.Full:
                self._jobs.get_nowait()
                self._jobs.put_nowait(None)
            self._worker.join(2.0)
            self._worker = None

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
        self._apply(small, self.detect(small))

    def _apply(self, small: np.ndarray, found: list[Box]) -> None:
        """Match detections (in ``small``'s pixels) to tracks; new faces get new ids, lost ones age out."""
        self.detections += 1
        boxes = [self._to_full(b) for b in found]
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
