"""Cameras through OpenCV: a device index (USB/V4L2), a video file, an RTSP/HTTP URL, or a GStreamer
pipeline string (Jetson CSI cameras through ``nvarguscamerasrc``, ending in ``appsink``).

The newest frame wins: the queue is short and a frame that nobody took in time is replaced (and
counted in ``dropped``), so that inference always sees the present, never a backlog. A live camera
that fails (unplugged, a dropped RTSP stream) is reopened with exponential backoff, and each reopen
is counted. A video file plays at its own frame rate, like a camera, and ends (or loops).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from firmware_bridge.sources.base import Sample, Source

if TYPE_CHECKING:
    from edge.config import CameraConfig

log = logging.getLogger(__name__)

JETSON_CSI_EXAMPLE = (
    "nvarguscamerasrc sensor-id=0 ! video/x-raw(memory:NVMM),width=1280,height=720,framerate=30/1 ! "
    "nvvidconv ! video/x-raw,format=BGRx ! videoconvert ! video/x-raw,format=BGR ! appsink drop=1 max-buffers=1"
)


def describe_device(device: int | str) -> str:
    """'index', 'gstreamer', 'url' or 'file': how ``device`` will be opened."""
    if isinstance(device, int) or (isinstance(device, str) and device.isdigit()):
        return "index"
    if "!" in device:
        return "gstreamer"
    if "://" in device:
        return "url"
    return "file"


def open_capture(device: int | str, width: int | None = None, height: int | None = None, fps: float | None = None) -> Any:
    """An opened ``cv2.VideoCapture`` for ``device``, or None when it cannot be opened."""
    import cv2

    how = describe_device(device)
    if how == "index":
        cap = cv2.VideoCapture(int(device))
    elif how == "gstreamer":
        cap = cv2.VideoCapture(str(device), cv2.CAP_GSTREAMER)
    elif how == "url":
        cap = cv2.VideoCapture(str(device), cv2.CAP_FFMPEG)
    else:
        cap = cv2.VideoCapture(str(device))
    if not cap.isOpened():
        cap.release()
        return None
    if how == "index":  # a live device takes the size asked for (or the nearest it has)
        if width:
            cap.set(cv2.CAP_PROP_FRAME_WIDTH, width)
        if height:
            cap.set(cv2.CAP_PROP_FRAME_HEIGHT, height)
        if fps:
            cap.set(cv2.CAP_PROP_FPS, fps)
        cap.set(cv2.CAP_PROP_BUFFERSIZE, 1)
    return cap


class CameraSource(Source):
    """Frames (uint8 BGR, height x width x 3) from an OpenCV capture; see the module docstring."""

    kind = "video"

    @classmethod
    def from_config(cls, cfg: CameraConfig) -> CameraSource:
        """The source for one ``kind = "camera"`` entry of the device config (not started)."""
        return cls(cfg.name, cfg.device, cfg.width, cfg.height, cfg.fps)

    def __init__(self, name: str, device: int | str = 0, width: int = 640, height: int = 480, fps: float = 30.0,
                 loop_file: bool = False, pace_file: bool = True, max_queue: int = 2,
                 min_backoff_s: float = 0.1, max_backoff_s: float = 5.0) -> None:
        super().__init__(name, max_queue=max_queue)
        self.device = device
        self.how = describe_device(device)
        self.width, self.height, self.fps = width, height, fps
        self.loop_file = loop_file
        self.pace_file = pace_file
        self.min_backoff_s, self.max_backoff_s = min_backoff_s, max_backoff_s
        self.frames = 0
        self.opens = 0
        self.open_failures = 0
        self.read_failures = 0
        self.last_error: str | None = None
        self.measured_fps = 0.0

    @property
    def is_file(self) -> bool:
        return self.how == "file"

    def _run(self) -> None:
        backoff = self.min_backoff_s
        while not self.stopped:
            cap = open_capture(self.device, self.width, self.height, self.fps)
            if cap is None:
                self.open_failures += 1
                self.last_error = f"cannot open {self.how} {self.device!r}"
                if self.open_failures == 1:
                    hint = " (is the file there?)" if self.is_file else ""
                    log.warning("camera %s: %s%s; retrying", self.name, self.last_error, hint)
                self._stop.wait(backoff)
                backoff = min(backoff * 2, self.max_backoff_s)
                continue
            self.opens += 1
            backoff = self.min_backoff_s
            try:
                ended = self._read_until_failure(cap)
            finally:
                cap.release()
            if ended and not self.loop_file:
                return  # a file played to its end
            if not ended:
                self.read_failures += 1
                log.warning("camera %s: read failed; reopening", self.name)

    def _read_until_failure(self, cap: Any) -> bool:
        """Read frames until stopped (True), the end of a file (True) or a failure of a live camera (False)."""
        import cv2

        file_fps = cap.get(cv2.CAP_PROP_FPS) or 0.0
        rate = file_fps if self.is_file and file_fps > 0 else self.fps
        t0 = time.monotonic()
        n = 0
        last_times: list[float] = []
        while not self.stopped:
            ok, frame = cap.read()
            if not ok or frame is None:
                return self.is_file
            now = time.time()
            if self.is_file and self.pace_file:
                delay = t0 + n / rate - time.monotonic()
                if delay > 0 and self._stop.wait(delay):
                    return True
                now = time.time()
            board_time = cap.get(cv2.CAP_PROP_POS_MSEC) / 1000.0 if self.is_file else None
            last_times.append(now)
            if len(last_times) > 30:
                last_times.pop(0)
            if len(last_times) > 1 and last_times[-1] > last_times[0]:
                self.measured_fps = (len(last_times) - 1) / (last_times[-1] - last_times[0])
            self._emit(Sample(self.name, "video", frame, rate, now, board_time, self.frames,
                              meta={"device": str(self.device)}), drop_oldest=True)
            self.frames += 1
            n += 1
        return True

    def stats(self) -> dict[str, Any]:
        return {**super().stats(), "frames": self.frames, "opens": self.opens, "reopens": max(0, self.opens - 1),
                "open_failures": self.open_failures, "read_failures": self.read_failures,
                "fps": round(self.measured_fps, 2), "last_error": self.last_error}


def is_video_file(path: str | Path) -> bool:
    return Path(path).suffix.lower() in {".mp4", ".avi", ".mkv", ".mov", ".webm", ".m4v", ".mjpeg", ".mjpg"}
