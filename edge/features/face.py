"""Face features: detect the largest face in a camera frame, crop it with a margin, and make the model input.

One definition for training and the runtime (numpy and OpenCV only, no torch):

* a camera frame (BGR or gray, any size): ``detect_faces`` -> ``crop_face`` -> ``face_input``
  (or ``frame_to_input``, which chains them);
* a FER2013 image, already a 48x48 face crop: ``face_input`` alone (gray, resize, normalise).

The model input is float32 ``(1, size, size)`` (channel first, one gray channel) with pixel
values ``x / 255 * 2 - 1`` in [-1, 1] (``NORMALISATION``); stack several to make a batch.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import cv2
import numpy as np

from edge.errors import InputError

DEFAULT_SIZE = 48
DEFAULT_MARGIN = 0.1
NORMALISATION = "x / 255 * 2 - 1 (gray uint8 -> [-1, 1])"
CASCADE_FILE = "haarcascade_frontalface_default.xml"

Box = tuple[int, int, int, int]  # x, y, width, height in pixels of the frame


@lru_cache(maxsize=1)
def _cascade() -> cv2.CascadeClassifier:
    path = Path(cv2.data.haarcascades) / CASCADE_FILE  # pyright: ignore[reportAttributeAccessIssue]  (not in cv2's stubs)
    classifier = cv2.CascadeClassifier(str(path))
    if classifier.empty():
        raise InputError(f"{path}: could not load the OpenCV Haar cascade (is opencv-python-headless<5 installed?)")
    return classifier


def to_gray(image: np.ndarray) -> np.ndarray:
    """A uint8 gray image from gray (H, W), (H, W, 1), BGR (H, W, 3) or BGRA (H, W, 4)."""
    image = np.asarray(image)
    if image.ndim == 3 and image.shape[2] == 1:
        image = image[:, :, 0]
    if image.ndim == 3 and image.shape[2] == 3:
        image = cv2.cvtColor(image, cv2.COLOR_BGR2GRAY)
    elif image.ndim == 3 and image.shape[2] == 4:
        image = cv2.cvtColor(image, cv2.COLOR_BGRA2GRAY)
    elif image.ndim != 2:
        raise InputError(f"face image: expected (H, W), (H, W, 1), (H, W, 3) or (H, W, 4), got shape {image.shape}")
    if image.size == 0:
        raise InputError(f"face image: empty image of shape {image.shape}")
    if image.dtype != np.uint8:
        if np.issubdtype(image.dtype, np.floating) and image.max(initial=0.0) <= 1.0:
            image = image * 255.0
        image = np.clip(image, 0, 255).astype(np.uint8)
    return image


def detect_faces(frame: np.ndarray, scale: float = 1.1, min_neighbors: int = 5, min_size: int = 24) -> list[Box]:
    """Face boxes (x, y, w, h) in ``frame``, largest first (OpenCV frontal-face Haar cascade)."""
    gray = cv2.equalizeHist(to_gray(frame))
    found = _cascade().detectMultiScale(
        gray, scaleFactor=scale, minNeighbors=min_neighbors, minSize=(min_size, min_size)
    )
    boxes = [tuple(int(v) for v in box) for box in np.asarray(found).reshape(-1, 4)]
    return sorted(boxes, key=lambda b: b[2] * b[3], reverse=True)  # type: ignore[return-value]


def crop_face(frame: np.ndarray, box: Box, size: int = DEFAULT_SIZE, margin: float = DEFAULT_MARGIN) -> np.ndarray:
    """The gray ``size`` x ``size`` uint8 crop of ``box`` grown by ``margin`` (a fraction of its side) each way.

    The grown box is kept square and clipped to the frame.
    """
    gray = to_gray(frame)
    x, y, w, h = box
    if w <= 0 or h <= 0:
        raise InputError(f"face box {box}: width and height must be positive")
    side = max(w, h) * (1.0 + 2.0 * margin)
    cx, cy = x + w / 2.0, y + h / 2.0
    x0, y0 = max(int(round(cx - side / 2)), 0), max(int(round(cy - side / 2)), 0)
    x1, y1 = min(int(round(cx + side / 2)), gray.shape[1]), min(int(round(cy + side / 2)), gray.shape[0])
    if x1 <= x0 or y1 <= y0:
        raise InputError(f"face box {box} lies outside the frame of shape {gray.shape}")
    return resize_gray(gray[y0:y1, x0:x1], size)


def resize_gray(gray: np.ndarray, size: int) -> np.ndarray:
    """Resize a gray image to ``size`` x ``size`` (area filter when shrinking, linear when growing)."""
    if gray.shape == (size, size):
        return gray
    shrink = gray.shape[0] > size or gray.shape[1] > size
    return cv2.resize(gray, (size, size), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)


def normalise(gray: np.ndarray) -> np.ndarray:
    """uint8 pixels -> float32 in [-1, 1] (see ``NORMALISATION``); works on any shape."""
    return (np.asarray(gray, dtype=np.float32) * np.float32(2.0 / 255.0) - np.float32(1.0)).astype(np.float32)


def face_input(crop: np.ndarray, size: int = DEFAULT_SIZE) -> np.ndarray:
    """Model input float32 ``(1, size, size)`` from a face crop (any size, gray or BGR)."""
    return normalise(resize_gray(to_gray(crop), size))[None]


def frame_to_input(
    frame: np.ndarray, size: int = DEFAULT_SIZE, margin: float = DEFAULT_MARGIN, scale: float = 1.1
) -> tuple[np.ndarray, Box] | None:
    """Detect the largest face in a camera frame and return (model input, its box), or None if no face."""
    boxes = detect_faces(frame, scale=scale)
    if not boxes:
        return None
    return face_input(crop_face(frame, boxes[0], size=size, margin=margin), size=size), boxes[0]


def load_image(path: str | Path) -> np.ndarray:
    """A gray uint8 image from a file, with a clear error for a missing or unreadable file."""
    image = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
    if image is None:
        raise InputError(f"{path}: not a readable image file")
    return image
