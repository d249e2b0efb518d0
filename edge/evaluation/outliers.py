"""Made-up outliers: inputs unlike anything a model was trained on, to set and check its OOD threshold.

``python -m edge.evaluation.outliers speech|face|eeg OUT [--n N] [--seed S]`` writes one folder per kind
under OUT, in the model's input format, for ``emoedge eval NAME --data DIR --ood OUT``:

* speech (3-s 16 kHz PCM wav): ``noise`` (white, pink and brown noise, a hum, at -45 to -10 dBFS),
  ``tones`` (music-like: note sequences with harmonics and envelopes, chords, sweeps) and
  ``synthetic_speech`` (eSpeak NG, ``apt-get install espeak-ng``, in voices other than en-us: the demo's
  clip is en-us eSpeak NG and stays out of the threshold's data);
* face (48x48 gray PNG): ``noise`` (white, blurred and salt-and-pepper noise), ``shapes`` (random
  rectangles, ellipses and lines) and ``patterns`` (stripes, checkerboards, gradients);
* face-crops (48x48 gray PNG, from real photographs without people: ``--data`` an OASIS-style folder, whose
  Object, Scenery and Animal images are read and never copied anywhere but ``OUT``): ``detector_hits``
  (what the runtime's face detector finds in them, cropped as the runtime crops: the non-faces a camera
  source would hand the face model) and ``random_crops`` (square crops of 15-60% of the shorter side);
* face-background (48x48 gray PNG, ``--data`` any folder of photographs, e.g. Emotion6): ``background``,
  random crops away from the faces the detector finds, not an outlier set to report on but the examples a
  face model's background direction learns from (``emoedge eval --fit-ood --ood-background``);
* scene (256x256 colour PNG, what a camera shows when it shows no scene): ``noise`` (colour and blurred
  noise, as a dark sensor's gain gives), ``patterns`` (stripes, checkerboards, gradients and shapes in
  random tints: test cards, screens) and ``blank`` (a nearly uniform colour: a covered lens, a wall);
* eeg (``.npy`` rows of the model's 160 z-scored band powers): ``noise`` (three times the spread of
  real rows) and ``saturated`` (a few electrodes pinned high in every band, as a loose contact does);
* eeg-raw (``.npy`` 1-s windows ``[N, 14, 128]`` as the HiSTN front end hands them to the model: band-passed,
  z-scored by the wearer's first minute, clipped at +-6): ``noise`` (broadband, three times the spread),
  ``blinks`` (large slow eye-movement and blink artefacts on the frontal electrodes, which the training
  data had removed) and ``muscle`` (bursts of 20-45 Hz muscle activity on the temporal electrodes, as
  jaw clenching gives). Flat and railed channels never reach the model: ``edge.features.eeg_raw`` flags
  them, feeds them as zeros and scales the confidence down.

Everything is generated from a seed; nothing comes from a data set.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import tempfile
import wave
from pathlib import Path

import numpy as np

RATE = 16_000
SENTENCES = [
    "The meeting starts at nine in the morning.", "Please put the books on the second shelf.",
    "The train to the city leaves every hour.", "My brother lives in a small house near the river.",
    "We need three more chairs for the table.", "The weather report said it might rain tomorrow.",
    "Turn left at the next corner and keep going.", "The library closes early on Sundays.",
    "She bought bread, milk and a few apples.", "The window in the kitchen is open.",
    "There are twelve months in a year.", "The printer on the third floor is out of paper.",
]
VOICES = ["en-gb", "en-gb-scotland", "en-029", "en-gb-x-rp", "de", "fr", "es", "it", "pt", "nl", "sw", "hi"]


def _write_wav(path: Path, audio: np.ndarray) -> None:
    pcm = (np.clip(audio, -1, 1) * 32767).astype(np.int16)
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(RATE)
        w.writeframes(pcm.tobytes())


def _level(x: np.ndarray, dbfs: float) -> np.ndarray:
    rms = float(np.sqrt(np.mean(x**2))) or 1.0
    return (x / rms * 10 ** (dbfs / 20)).astype(np.float32)


def noise_clip(rng: np.random.Generator, seconds: float = 3.0) -> np.ndarray:
    """White, pink or brown noise, or mains hum with harmonics, at a random level."""
    n = int(seconds * RATE)
    kind = rng.integers(4)
    if kind == 3:
        t = np.arange(n) / RATE
        f0 = rng.choice([50.0, 60.0])
        x = sum(rng.uniform(0.2, 1) / h * np.sin(2 * np.pi * f0 * h * t) for h in range(1, 6))
        x = np.asarray(x) + 0.05 * rng.standard_normal(n)
    else:
        spectrum = np.fft.rfft(rng.standard_normal(n))
        f = np.maximum(np.fft.rfftfreq(n, 1 / RATE), 1.0)
        spectrum /= f ** (kind / 2)  # 0 white, 1 pink, 2 brown
        x = np.fft.irfft(spectrum, n)
    return _level(x, rng.uniform(-45, -10))


def tone_clip(rng: np.random.Generator, seconds: float = 3.0) -> np.ndarray:
    """Music-like sound: a melody of notes with harmonics and envelopes, a chord, or a sweep."""
    n = int(seconds * RATE)
    t = np.arange(n) / RATE
    kind = rng.integers(3)
    if kind == 0:  # melody
        x = np.zeros(n)
        start = 0
        while start < n:
            length = int(rng.uniform(0.12, 0.6) * RATE)
            f = 220 * 2 ** (rng.integers(-12, 19) / 12)
            tt = np.arange(min(length, n - start)) / RATE
            env = np.minimum(1, tt / 0.01) * np.exp(-tt * rng.uniform(2, 8))
            x[start : start + len(tt)] += env * sum(np.sin(2 * np.pi * f * h * tt) / h**rng.uniform(1, 2) for h in range(1, 6))
            start += length
    elif kind == 1:  # chord
        root = 110 * 2 ** (rng.integers(0, 24) / 12)
        x = sum(np.sin(2 * np.pi * root * 2 ** (s / 12) * t) for s in rng.choice([0, 3, 4, 7, 10, 12], 3, replace=False))
        x = np.asarray(x) * (1 + 0.3 * np.sin(2 * np.pi * rng.uniform(2, 6) * t))
    else:  # sweep
        f0, f1 = rng.uniform(100, 1000), rng.uniform(200, 6000)
        phase = 2 * np.pi * (f0 * t + (f1 - f0) * t**2 / (2 * seconds))
        x = np.sin(phase)
    return _level(np.asarray(x, dtype=np.float64), rng.uniform(-30, -10))


def espeak_clip(rng: np.random.Generator, text: str, voice: str) -> np.ndarray:
    """One sentence from eSpeak NG at a random pitch and speed, 16 kHz."""
    from scipy.signal import resample_poly

    exe = shutil.which("espeak-ng")
    if exe is None:
        raise RuntimeError("synthetic speech needs espeak-ng (apt-get install espeak-ng)")
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "s.wav"
        options = ["-p", str(int(rng.integers(20, 80))), "-s", str(int(rng.integers(130, 210)))]
        subprocess.run([exe, "-v", voice, *options, "-w", str(path), text], check=True, capture_output=True)
        with wave.open(str(path)) as w:
            rate = w.getframerate()
            pcm = np.frombuffer(w.readframes(w.getnframes()), dtype=np.int16).astype(np.float32) / 32768.0
    audio = resample_poly(pcm, RATE, rate) if rate != RATE else pcm
    return _level(audio, rng.uniform(-30, -15))


def speech_outliers(out: Path, n: int = 40, seed: int = 0) -> dict[str, int]:
    """Write ``noise``, ``tones`` and ``synthetic_speech`` wav folders under ``out``; returns counts."""
    rng = np.random.default_rng(seed)
    counts = {}
    for kind, make in (("noise", noise_clip), ("tones", tone_clip)):
        (out / kind).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            _write_wav(out / kind / f"{kind}_{i:03d}.wav", make(rng))
        counts[kind] = n
    if shutil.which("espeak-ng"):
        (out / "synthetic_speech").mkdir(parents=True, exist_ok=True)
        for i in range(n):
            text = SENTENCES[(i + 7 * seed) % len(SENTENCES)]
            voice = VOICES[(i * 5 + i // len(SENTENCES) + 3 * seed) % len(VOICES)]
            _write_wav(out / "synthetic_speech" / f"espeak_{voice}_{i:03d}.wav", espeak_clip(rng, text, voice))
        counts["synthetic_speech"] = n
    return counts


def face_outlier(rng: np.random.Generator, kind: str, size: int = 48) -> np.ndarray:
    """One non-face gray image (uint8, size x size) of a kind: noise, shapes or patterns."""
    import cv2

    if kind == "noise":
        k = rng.integers(3)
        if k == 0:
            img = rng.integers(0, 256, (size, size))
        elif k == 1:
            img = cv2.GaussianBlur(rng.standard_normal((size, size)).astype(np.float32), (0, 0), rng.uniform(1, 4))
            img = (img - img.min()) / (np.ptp(img) or 1) * 255
        else:
            img = np.full((size, size), rng.integers(60, 200))
            mask = rng.random((size, size))
            img[mask < 0.1], img[mask > 0.9] = 0, 255
        return np.asarray(img, dtype=np.uint8)
    if kind == "shapes":
        img = np.full((size, size), int(rng.integers(0, 256)), dtype=np.uint8)
        for _ in range(int(rng.integers(2, 7))):
            colour = int(rng.integers(0, 256))
            p, q = rng.integers(0, size, 2), rng.integers(0, size, 2)
            s = int(rng.integers(3))
            if s == 0:
                cv2.rectangle(img, tuple(int(v) for v in p), tuple(int(v) for v in q), colour, -1)
            elif s == 1:
                axes = (int(rng.integers(3, size // 2)), int(rng.integers(3, size // 2)))
                cv2.ellipse(img, tuple(int(v) for v in p), axes, float(rng.uniform(0, 180)), 0, 360, colour, -1)
            else:
                cv2.line(img, tuple(int(v) for v in p), tuple(int(v) for v in q), colour, int(rng.integers(1, 5)))
        return img
    y, x = np.mgrid[0:size, 0:size].astype(np.float64)
    k = rng.integers(3)
    angle = rng.uniform(0, np.pi)
    u = x * np.cos(angle) + y * np.sin(angle)
    if k == 0:
        img = 127.5 + 127.5 * np.sin(2 * np.pi * u / rng.uniform(3, 16))
    elif k == 1:
        cell = int(rng.integers(3, 12))
        img = (((x // cell) + (y // cell)) % 2) * 255.0
    else:
        img = (u - u.min()) / (np.ptp(u) or 1) * 255
    return np.asarray(img, dtype=np.uint8)


def face_outliers(out: Path, n: int = 200, seed: int = 0) -> dict[str, int]:
    """Write ``noise``, ``shapes`` and ``patterns`` PNG folders under ``out``; returns counts."""
    import cv2

    rng = np.random.default_rng(seed)
    for kind in ("noise", "shapes", "patterns"):
        (out / kind).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            cv2.imwrite(str(out / kind / f"{kind}_{i:04d}.png"), face_outlier(rng, kind))
    return {k: n for k in ("noise", "shapes", "patterns")}


FACELESS_CATEGORIES = ("Object", "Scenery", "Animal")


FRAME_SIDE = 512  # a photograph is scaled so that its longer side is a camera frame's before the detector sees it


def camera_frame(path: Path) -> np.ndarray:
    """A photograph as gray uint8, scaled to a camera frame's size (longer side ``FRAME_SIDE``) for the detector."""
    import cv2

    from edge.features.face import load_image

    gray = load_image(path)
    scale = FRAME_SIDE / max(gray.shape)
    return cv2.resize(gray, None, fx=scale, fy=scale, interpolation=cv2.INTER_LINEAR)


def oasis_photos(data: Path, categories: tuple[str, ...]) -> list[Path]:
    """The photographs of an OASIS-style folder (``oasis_labels.csv`` with ``file`` and ``category``) of some
    categories, sorted; InputError where the table is missing or none is of those categories."""
    import csv

    from edge.errors import InputError

    table = Path(data) / "oasis_labels.csv"
    if not table.is_file():
        raise InputError(f"{data}: no oasis_labels.csv (an OASIS-style folder of photographs is expected)")
    with table.open(newline="", encoding="utf-8") as f:
        files = sorted(Path(data) / row["file"] for row in csv.DictReader(f) if row.get("category") in categories)
    if not files:
        raise InputError(f"{table}: no images of the categories {', '.join(categories)}")
    return files


def face_crop_outliers(out: Path, data: Path, n: int = 200, seed: int = 0) -> dict[str, int]:
    """Write ``detector_hits`` and ``random_crops`` PNG folders of real non-face crops under ``out``.

    The images are an OASIS-style folder's (``oasis_labels.csv`` with ``file`` and ``category``) of the
    categories without people; each is upscaled to 512 px (a camera frame's scale) for the detector. The
    seed's parity picks one half of the photographs (by a hash of the file name), so that a selection set
    (seed 0) and a report set (seed 1) never share a photograph.
    """
    import zlib

    import cv2

    from edge.features.face import DEFAULT_SIZE, crop_face, detect_faces, resize_gray

    files = [p for p in oasis_photos(data, FACELESS_CATEGORIES)
             if zlib.crc32(p.relative_to(data).as_posix().encode()) % 2 == seed % 2]
    rng = np.random.default_rng(seed)
    rng.shuffle(files)  # type: ignore[arg-type]
    hits: list[np.ndarray] = []
    crops: list[np.ndarray] = []
    for path in files:
        frame = camera_frame(path)
        if len(hits) < n:
            hits += [crop_face(frame, box) for box in detect_faces(frame)][: n - len(hits)]
        if len(crops) < n:
            side = int(rng.uniform(0.15, 0.6) * min(frame.shape))
            y, x = int(rng.integers(0, frame.shape[0] - side + 1)), int(rng.integers(0, frame.shape[1] - side + 1))
            crops.append(resize_gray(frame[y:y + side, x:x + side], DEFAULT_SIZE))  # as the runtime resizes a face
        if len(hits) >= n and len(crops) >= n:
            break
    written = {}
    for kind, images in (("detector_hits", hits), ("random_crops", crops)):
        (out / kind).mkdir(parents=True, exist_ok=True)
        for i, image in enumerate(images):
            cv2.imwrite(str(out / kind / f"{kind}_{i:04d}.png"), image)
        written[kind] = len(images)
    return written


PHOTO_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")


def face_background(out: Path, data: Path, n: int = 5000, per_image: int = 3, seed: int = 0) -> dict[str, int]:
    """Write a ``background`` PNG folder under ``out``: random square crops of the photographs anywhere under
    ``data``, away from every face the runtime's detector finds, resized as the runtime resizes a face.

    What a face model must not name, for its background direction (``emoedge eval --fit-ood
    --ood-background``): the world around the faces a camera sees. Each photograph is scaled to 512 px (a
    camera frame's scale) first; a crop that overlaps a detected face (grown by half its side) by more than
    5% is dropped. Photographs with people are welcome (their faces are avoided), but keep them apart from
    the photographs the outliers are reported on (``face-crops`` reads OASIS; Emotion6 is a good source here).
    """
    import cv2

    from edge.errors import InputError
    from edge.features.face import DEFAULT_SIZE, detect_faces, resize_gray

    files = sorted(p for p in Path(data).rglob("*") if p.suffix.lower() in PHOTO_SUFFIXES)
    if not files:
        raise InputError(f"{data}: no photographs ({', '.join(PHOTO_SUFFIXES)}) under it")
    rng = np.random.default_rng(seed)
    (out / "background").mkdir(parents=True, exist_ok=True)
    written = 0
    for path in files:
        frame = camera_frame(path)
        faces = np.zeros(frame.shape, dtype=bool)
        for x, y, w, h in detect_faces(frame):
            faces[max(0, y - h // 2):y + h + h // 2, max(0, x - w // 2):x + w + w // 2] = True
        kept = 0
        for _ in range(20 * per_image):
            if kept >= per_image or written >= n:
                break
            side = int(rng.uniform(0.1, 0.6) * min(frame.shape))
            y, x = int(rng.integers(0, frame.shape[0] - side + 1)), int(rng.integers(0, frame.shape[1] - side + 1))
            if faces[y:y + side, x:x + side].mean() > 0.05:
                continue
            cv2.imwrite(str(out / "background" / f"background_{written:05d}.png"),
                        resize_gray(frame[y:y + side, x:x + side], DEFAULT_SIZE))
            kept += 1
            written += 1
        if written >= n:
            break
    return {"background": written}


def scene_outlier(rng: np.random.Generator, kind: str, size: int = 256) -> np.ndarray:
    """One non-scene colour image (BGR uint8, size x size) of a kind: noise, patterns or blank."""
    if kind == "noise":
        return np.stack([face_outlier(rng, "noise", size) for _ in range(3)], axis=-1)
    if kind == "patterns":
        gray = face_outlier(rng, "patterns" if rng.random() < 0.6 else "shapes", size).astype(np.float64)
        low, high = rng.integers(0, 256, 3), rng.integers(0, 256, 3)
        return np.asarray(low + (high - low) * (gray[..., None] / 255.0), dtype=np.uint8)
    colour = rng.integers(0, 256, 3).astype(np.float64)
    img = colour + rng.normal(0, rng.uniform(0.5, 4), (size, size, 3))
    return np.asarray(np.clip(img, 0, 255), dtype=np.uint8)


def scene_outliers(out: Path, n: int = 100, seed: int = 0) -> dict[str, int]:
    """Write ``noise``, ``patterns`` and ``blank`` PNG folders under ``out``; returns counts."""
    import cv2

    rng = np.random.default_rng(seed)
    kinds = ("noise", "patterns", "blank")
    for kind in kinds:
        (out / kind).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            cv2.imwrite(str(out / kind / f"{kind}_{i:04d}.png"), scene_outlier(rng, kind))
    return {k: n for k in kinds}


def eeg_outliers(out: Path, n: int = 200, seed: int = 0, features: int = 160) -> dict[str, int]:
    """Write ``noise`` and ``saturated`` folders of ``.npy`` rows (z-scored band powers) under ``out``."""
    rng = np.random.default_rng(seed)
    noise = 3.0 * rng.standard_normal((n, features))
    saturated = 0.5 * rng.standard_normal((n, features))
    electrodes = features // 5
    for row in saturated:
        bad = rng.choice(electrodes, size=int(rng.integers(1, 5)), replace=False)
        for band in range(5):
            row[band * electrodes + bad] = rng.uniform(4, 8)
    for kind, rows in (("noise", noise), ("saturated", saturated)):
        (out / kind).mkdir(parents=True, exist_ok=True)
        np.save(out / kind / f"{kind}.npy", rows.astype(np.float32))
    return {"noise": n, "saturated": n}


RAW_EEG_FRONTAL = (0, 1, 12, 13)  # AF3, F7, F8, AF4 in the Emotiv order of edge.zoo.dasps.ELECTRODES
RAW_EEG_TEMPORAL = (3, 4, 9, 10)  # FC5, T7, T8, FC6


def _eeg_like(rng: np.random.Generator, n: int, channels: int, samples: int, rate: int,
              band: tuple[float, float] = (4.0, 45.0), tilt: float = 0.5) -> np.ndarray:
    """Unit-spread band-limited noise with a 1/f^tilt amplitude spectrum, shaped like normalised EEG."""
    spectrum = np.fft.rfft(rng.standard_normal((n, channels, samples)), axis=-1)
    f = np.fft.rfftfreq(samples, 1 / rate)
    spectrum *= np.where((f >= band[0]) & (f <= band[1]), np.maximum(f, 1.0) ** -tilt, 0.0)
    x = np.fft.irfft(spectrum, n=samples, axis=-1)
    return x / x.std(axis=-1, keepdims=True)


def raw_eeg_outliers(out: Path, n: int = 200, seed: int = 0, channels: int = 14, samples: int = 128,
                     rate: int = 128, clip: float = 6.0) -> dict[str, int]:
    """Write ``noise``, ``blinks`` and ``muscle`` folders of ``.npy`` windows under ``out``."""
    rng = np.random.default_rng(seed)
    t = np.arange(samples) / rate
    noise = 3.0 * rng.standard_normal((n, channels, samples))
    blinks = _eeg_like(rng, n, channels, samples, rate)
    for window in blinks:
        centre, width = rng.uniform(0.2, 0.8), rng.uniform(0.05, 0.15)
        blink = rng.uniform(4, 10) * np.exp(-0.5 * ((t - centre) / width) ** 2)
        drift = rng.uniform(1, 3) * np.sin(2 * np.pi * rng.uniform(0.5, 2) * t + rng.uniform(0, 2 * np.pi))
        window[list(RAW_EEG_FRONTAL)] += blink + drift
    muscle = _eeg_like(rng, n, channels, samples, rate)
    bursts = _eeg_like(rng, n, len(RAW_EEG_TEMPORAL), samples, rate, band=(20.0, 45.0), tilt=0.0)
    for window, burst in zip(muscle, bursts, strict=True):
        centre, width = rng.uniform(0.2, 0.8), rng.uniform(0.1, 0.3)
        window[list(RAW_EEG_TEMPORAL)] += rng.uniform(2, 5) * burst * np.exp(-0.5 * ((t - centre) / width) ** 2)
    written = {}
    for kind, windows in (("noise", noise), ("blinks", blinks), ("muscle", muscle)):
        (out / kind).mkdir(parents=True, exist_ok=True)
        np.save(out / kind / f"{kind}.npy", np.clip(windows, -clip, clip).astype(np.float32))
        written[kind] = n
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m edge.evaluation.outliers", description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("modality", choices=["speech", "face", "face-crops", "face-background", "scene", "eeg", "eeg-raw"])
    parser.add_argument("--data", type=Path, help="face-crops: an OASIS-style folder of photographs (oasis_labels.csv); "
                        "face-background: any folder of photographs")
    parser.add_argument("out", type=Path)
    parser.add_argument("--n", type=int, help="samples per kind (default: speech 40, scene 100, face-background 5000, "
                        "the others 200)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    n = args.n or {"speech": 40, "scene": 100, "face-background": 5000}.get(args.modality, 200)
    if args.modality in ("face-crops", "face-background"):
        if args.data is None:
            parser.error(f"{args.modality} needs --data (a folder of photographs)")
        make_from = face_crop_outliers if args.modality == "face-crops" else face_background
        counts = make_from(args.out, args.data, n=n, seed=args.seed)
    else:
        make = {"speech": speech_outliers, "face": face_outliers, "scene": scene_outliers, "eeg": eeg_outliers,
                "eeg-raw": raw_eeg_outliers}[args.modality]
        counts = make(args.out, n=n, seed=args.seed)
    print(f"{args.out}: " + ", ".join(f"{k} {v}" for k, v in counts.items()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
