"""Face features: gray conversion, normalisation, margin crops, and Haar detection on real FER2013 faces."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from edge.errors import InputError
from edge.features.face import (
    crop_face, detect_faces, face_input, frame_to_input, load_image, normalise, resize_gray, to_gray,
)


def test_normalise_maps_uint8_to_minus_one_one() -> None:
    x = normalise(np.array([0, 255, 127], dtype=np.uint8))
    assert x.dtype == np.float32
    np.testing.assert_allclose(x, [-1.0, 1.0, 127 / 255 * 2 - 1], atol=1e-6)


@pytest.mark.parametrize("shape", [(30, 40), (30, 40, 1), (30, 40, 3), (30, 40, 4)])
def test_to_gray_accepts_gray_bgr_and_bgra(shape: tuple[int, ...]) -> None:
    image = np.full(shape, 200, dtype=np.uint8)
    gray = to_gray(image)
    assert gray.shape == (30, 40) and gray.dtype == np.uint8
    assert int(gray[0, 0]) == 200


def test_to_gray_rejects_bad_shapes_with_a_clear_error() -> None:
    with pytest.raises(InputError, match="expected"):
        to_gray(np.zeros((2, 3, 5), dtype=np.uint8))
    with pytest.raises(InputError, match="empty"):
        to_gray(np.zeros((0, 3), dtype=np.uint8))


def test_face_input_is_one_channel_square_float() -> None:
    crop = np.random.default_rng(0).integers(0, 256, (100, 80, 3), dtype=np.uint8)
    x = face_input(crop, size=48)
    assert x.shape == (1, 48, 48) and x.dtype == np.float32
    assert -1.0 <= x.min() and x.max() <= 1.0
    # a crop already at the model size (a FER2013 image) is only normalised
    fer = np.arange(48 * 48, dtype=np.uint32).reshape(48, 48).astype(np.uint8)
    np.testing.assert_array_equal(face_input(fer), normalise(fer)[None])


def test_crop_face_grows_the_box_by_the_margin_and_clips_to_the_frame() -> None:
    frame = np.zeros((200, 200), dtype=np.uint8)
    frame[50:150, 50:150] = 255  # the "face"
    # no margin: the crop is all face; with 50% margin the face is the middle half of the crop
    assert crop_face(frame, (50, 50, 100, 100), size=40, margin=0.0).min() == 255
    wide = crop_face(frame, (50, 50, 100, 100), size=40, margin=0.5)
    assert wide[20, 20] == 255 and wide[2, 2] == 0 and wide[37, 37] == 0
    # a box at the corner is clipped, not padded or failed
    corner = crop_face(frame, (0, 0, 60, 60), size=32, margin=0.5)
    assert corner.shape == (32, 32)
    with pytest.raises(InputError, match="outside"):
        crop_face(frame, (500, 500, 20, 20))
    with pytest.raises(InputError, match="positive"):
        crop_face(frame, (10, 10, 0, 5))


def test_resize_gray_keeps_an_image_of_the_right_size() -> None:
    image = np.random.default_rng(1).integers(0, 256, (48, 48), dtype=np.uint8)
    assert resize_gray(image, 48) is image
    assert resize_gray(image, 64).shape == (64, 64)


def test_no_face_in_a_blank_frame() -> None:
    frame = np.full((240, 320, 3), 128, dtype=np.uint8)
    assert detect_faces(frame) == []
    assert frame_to_input(frame) is None


def test_load_image_names_the_bad_file(tmp_path: Path) -> None:
    bad = tmp_path / "not_an_image.jpg"
    bad.write_bytes(b"nope")
    with pytest.raises(InputError, match="not_an_image.jpg"):
        load_image(bad)


@pytest.mark.data
def test_detects_real_faces_placed_in_a_camera_frame(data_dir: Path) -> None:
    """FER2013 faces, upscaled 3x into a bigger BGR frame: the cascade finds most of them where they are."""
    folder = data_dir / "fer2013" / "validation" / "happy"
    if not folder.is_dir():
        pytest.skip(f"{folder} not found")
    files = sorted(folder.iterdir())[:20]
    found = 0
    for path in files:
        face = cv2.resize(load_image(path), (144, 144), interpolation=cv2.INTER_CUBIC)
        frame = np.full((240, 320), 90, dtype=np.uint8)
        frame[40:184, 100:244] = face
        result = frame_to_input(cv2.cvtColor(frame, cv2.COLOR_GRAY2BGR))
        if result is None:
            continue
        x, (bx, by, bw, bh) = result
        found += 1
        assert x.shape == (1, 48, 48)
        centre = (bx + bw / 2, by + bh / 2)
        assert 100 < centre[0] < 244 and 40 < centre[1] < 184, f"{path.name}: face found at {centre}, not where placed"
        assert 72 < bw < 288, f"{path.name}: face box width {bw} for a 144 px face"
    assert found >= len(files) // 2, f"only {found} of {len(files)} faces detected"
