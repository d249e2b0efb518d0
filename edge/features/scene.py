"""Scene images -> the scene encoder's input, with the checks a file from anywhere needs.

One definition for training, ``emoedge eval scene``, ``emoedge explain`` and the camera source: the
whole frame squashed to ``size`` x ``size`` (INTER_AREA), RGB, float32 in [0, 255], NCHW. The
ImageNet normalisation lives inside the encoder graph, so a runner only resizes.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from edge.errors import InputError

DEFAULT_SIZE = 224
MIN_SIDE = 32  # below this a photograph holds too little to say anything about
MAX_PIXELS = 50_000_000  # a decoded image larger than this is refused (memory), before decoding
MAX_FILE_BYTES = 64 << 20
# ImageNet statistics the pretrained EfficientNet-Lite0 weights expect (applied inside the graph)
MEAN = (0.485 * 255, 0.456 * 255, 0.406 * 255)
STD = (0.229 * 255, 0.224 * 255, 0.225 * 255)


def _header_pixels(data: bytes) -> int | None:
    """Width x height from a PNG or JPEG header, without decoding (guards against decompression bombs)."""
    if data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) >= 24:
        return int.from_bytes(data[16:20], "big") * int.from_bytes(data[20:24], "big")
    if data[:2] == b"\xff\xd8":
        i = 2
        while i + 9 < len(data):
            if data[i] != 0xFF:
                return None
            marker = data[i + 1]
            length = int.from_bytes(data[i + 2:i + 4], "big")
            if marker in (0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF):
                h = int.from_bytes(data[i + 5:i + 7], "big")
                w = int.from_bytes(data[i + 7:i + 9], "big")
                return w * h
            i += 2 + length
    return None


def decode_image(data: bytes, name: str = "image") -> np.ndarray:
    """BGR uint8 ``(H, W, 3)`` from encoded bytes; a clear InputError for anything that is not a usable photo.

    Grayscale files are accepted (replicated to three channels: the encoder was trained on colour, so
    the estimate is less sure, never a crash); truncated files, non-images, tiny and huge images are refused.
    """
    if not data:
        raise InputError(f"{name}: empty file")
    if len(data) > MAX_FILE_BYTES:
        raise InputError(f"{name}: {len(data)} bytes, larger than the {MAX_FILE_BYTES >> 20} MiB an image may have")
    pixels = _header_pixels(data)
    if pixels is not None and pixels > MAX_PIXELS:
        raise InputError(f"{name}: {pixels} pixels, more than the {MAX_PIXELS} an image may have (resize it first)")
    if data[:2] == b"\xff\xd8" and not data.rstrip(b"\x00").endswith(b"\xff\xd9"):
        raise InputError(f"{name}: truncated JPEG (no end-of-image marker)")
    if data[:8] == b"\x89PNG\r\n\x1a\n" and b"IEND" not in data[-32:]:
        raise InputError(f"{name}: truncated PNG (no IEND chunk)")
    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    if image is None:
        raise InputError(f"{name}: not a readable image (JPEG, PNG, BMP, WebP, ...)")
    if image.dtype != np.uint8:
        image = cv2.convertScaleAbs(image, alpha=255.0 / max(float(image.max()), 1.0))
    if image.ndim == 2:
        image = cv2.cvtColor(image, cv2.COLOR_GRAY2BGR)
    elif image.shape[2] == 4:
        image = cv2.cvtColor(image, cv2.COLOR_BGRA2BGR)
    elif image.shape[2] != 3:
        raise InputError(f"{name}: {image.shape[2]} channels (expected gray, BGR or BGRA)")
    h, w = image.shape[:2]
    if min(h, w) < MIN_SIDE:
        raise InputError(f"{name}: {w}x{h} pixels is too small (each side at least {MIN_SIDE})")
    if h * w > MAX_PIXELS:
        raise InputError(f"{name}: {w}x{h} pixels is more than the {MAX_PIXELS} an image may have")
    return image


def load_image(path: str | Path) -> np.ndarray:
    """BGR uint8 image from a file (see ``decode_image`` for what is refused)."""
    p = Path(path)
    try:
        if p.stat().st_size > MAX_FILE_BYTES:
            raise InputError(f"{p}: larger than the {MAX_FILE_BYTES >> 20} MiB an image may have")
        data = p.read_bytes()
    except FileNotFoundError:
        raise InputError(f"{p}: no such file") from None
    except IsADirectoryError:
        raise InputError(f"{p}: a folder, not an image file") from None
    except OSError as exc:
        raise InputError(f"{p}: cannot read ({exc.strerror or exc})") from None
    return decode_image(data, str(p))


def is_grayscale(image: np.ndarray) -> bool:
    """True for a frame whose three channels are equal (a gray file or a monochrome camera)."""
    return bool(image.ndim == 2 or (np.array_equal(image[..., 0], image[..., 1]) and np.array_equal(image[..., 1], image[..., 2])))


MIN_CONTRAST = 4.0  # gray levels (0-255): the least spread of a frame that shows a scene (real photos: 7 and up)


def shows_no_scene(item: np.ndarray) -> bool:
    """Whether an encoder input (``scene_input``'s ``(3, size, size)``) is (almost) one flat colour: a covered
    lens, a dark room, a camera sending a blank picture. The OOD gate misses some of these (a black frame
    sits near the data sets' night photographs), so the scene path calls them ``unknown`` outright."""
    return float(np.asarray(item, np.float32).mean(axis=0).std()) < MIN_CONTRAST


def scene_input(image: np.ndarray, size: int = DEFAULT_SIZE, flip: bool = False) -> np.ndarray:
    """The encoder's input ``(3, size, size)`` float32 RGB in [0, 255] from a BGR (or gray) uint8 frame."""
    if image.ndim == 2:
        image = cv2.cvtColor(image, cv2.COLOR_GRAY2BGR)
    resized = cv2.resize(image, (size, size), interpolation=cv2.INTER_AREA)
    if flip:
        resized = resized[:, ::-1]
    rgb = resized[:, :, ::-1].astype(np.float32)
    return np.ascontiguousarray(rgb.transpose(2, 0, 1))
