"""The face peer: Arriaga et al.'s mini-Xception (FER2013) converted to ONNX, benchmarked beside our face model.

The Keras file lives in the research data folder (``teachers/fer_mini_xception``); the conversion is
``tools/convert_mini_xception.py`` (the face model's converter), and its ONNX output goes to the cache,
never into the repository. The peer is evaluated on the same FER2013 validation folder as the face
model, with its own preprocessing (64x64 grayscale scaled to [-1, 1]) and its own label order.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import numpy as np

from edge.bench.targets import BenchOptions, Target
from edge.paths import PROJECT_ROOT, cache_dir

PEER_NAME = "mini-xception"
TEACHER_FILE = Path("teachers/fer_mini_xception/fer2013_mini_XCEPTION.102-0.66.hdf5")
# The order of the model's outputs (face_classification's get_labels('fer2013')).
PEER_LABELS = ["angry", "disgust", "fear", "happy", "sad", "surprise", "neutral"]
SIZE = 64


def _converter() -> Any | None:
    path = PROJECT_ROOT / "tools" / "convert_mini_xception.py"
    if not path.is_file():
        return None
    spec = importlib.util.spec_from_file_location("convert_mini_xception", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _parameters(onnx_path: Path) -> int:
    import onnx

    proto = onnx.load(str(onnx_path))
    return int(sum(int(np.prod(t.dims)) for t in proto.graph.initializer))


def load_fer_validation(folder: Path, limit: int | None, seed: int, face_labels: list[str] | None = None) -> Any:
    """FER2013 validation images as [N, 64, 64] in [-1, 1] (``extra["images"]``), labels indexing PEER_LABELS.

    With ``face_labels`` (our face model's card labels) the files are the very ones ``emoedge eval face``
    picks for the same limit and seed (its stratified slice), so the two rows measure the same images.
    """
    from edge.evaluation import LabelledSet
    from edge.evaluation.face import list_images, stratified_slice
    from edge.features.face import load_image, resize_gray

    order = face_labels or PEER_LABELS
    paths, targets, _ = list_images(folder, order)
    y = np.asarray(targets, dtype=np.int64)
    if not paths:
        raise FileNotFoundError(f"{folder}: no FER2013 class folders ({', '.join(PEER_LABELS)}) with images")
    if limit is not None:
        keep = stratified_slice(y, limit, seed)
        paths, y = [paths[i] for i in keep], y[keep]
    peer_index = np.array([PEER_LABELS.index(label) if label in PEER_LABELS else -1 for label in order])
    labels = peer_index[y]
    usable = labels >= 0  # a class of our card that the peer does not have is skipped
    paths = [p for p, ok in zip(paths, usable, strict=True) if ok]
    images = np.stack([resize_gray(load_image(p), SIZE) for p in paths]).astype(np.float32) / 255.0 * 2.0 - 1.0
    description = f"{folder} ({len(paths)} images" + (f", stratified slice seed {seed}" if limit is not None else "") + ")"
    return LabelledSet(inputs={}, labels=labels[usable], skipped=int((~usable).sum()), description=description,
                       extra={"images": images, "files": [str(p) for p in paths]})


def peer_target(data_dir: Path | None, face_card: Any = None) -> tuple[Target | None, str]:
    """The peer as a bench Target, or None and the reason it is skipped.

    ``face_card``: our face model's card, so that the peer is measured on the same validation images."""
    if data_dir is None:
        return None, "face peer skipped: no data folder (give --data or set EMOEDGE_DATA)"
    h5 = Path(data_dir) / TEACHER_FILE
    if not h5.is_file():
        return None, f"face peer skipped: {h5} not found"
    converter = _converter()
    if converter is None:
        return None, "face peer skipped: tools/convert_mini_xception.py (from the face model's branch) is not in this checkout"
    from edge.card import ModelCard, onnx_io, sha256_file

    out_dir = cache_dir() / "peers" / sha256_file(h5)[:16]
    onnx_path = out_dir / "mini_xception.onnx"
    if not onnx_path.is_file():
        out_dir.mkdir(parents=True, exist_ok=True)
        try:
            onnx_path = Path(converter.convert(h5, onnx_path))
        except Exception as exc:  # the converter needs its own dependencies (h5py, a Keras reader)
            return None, f"face peer skipped: converting {h5.name} failed ({type(exc).__name__}: {exc})"
    inputs, outputs = onnx_io(onnx_path)
    input_name = inputs[0].name
    channels_first = len(inputs[0].shape) == 4 and inputs[0].shape[1] == 1
    card = ModelCard.model_validate({
        "name": PEER_NAME, "version": "fer2013_mini_XCEPTION.102", "modality": "face", "labels": PEER_LABELS,
        "inputs": [{**inputs[0].model_dump(exclude_none=True),
                    "shape": ["batch", 1, SIZE, SIZE] if channels_first else ["batch", SIZE, SIZE, 1],
                    "layout": "NCHW" if channels_first else "NHWC", "normalisation": "x / 255 * 2 - 1"}],
        "outputs": [o.model_dump(exclude_none=True) for o in outputs],
        "features": {"recipe": "mini_xception_64"},
        "parameters": _parameters(onnx_path),
        "training": {"data": "FER2013 (Arriaga et al. 2017, oarriaga/face_classification)", "terms": "MIT weights; FER2013 research-only"},
    })
    fer = Path(data_dir) / "fer2013" / "validation"

    def load_validation(options: BenchOptions) -> Any:
        data = load_fer_validation(fer, options.limit, options.seed, face_card.labels if face_card is not None else None)
        images = data.extra.pop("images")
        data.inputs = {input_name: images[:, None] if channels_first else images[..., None]}
        return data

    def evaluate(runner: Any, data: Any) -> dict[str, Any]:
        from edge.bench.targets import run_batched
        from edge.evaluation.metrics import classification_metrics

        out = run_batched(runner, data.inputs, 64)
        scores = out["logits"] if "logits" in out else out[outputs[0].name]
        return classification_metrics(data.labels, scores.argmax(axis=1), PEER_LABELS)

    note = (f"face peer: {h5.name} (mini-Xception, Arriaga et al. 2017) converted to ONNX by "
            "tools/convert_mini_xception.py; FP32 only; its input is 64x64 in [-1, 1]"
            + ("; measured on the same validation images as our face model" if face_card is not None else ""))
    return Target(name=PEER_NAME, card=card, folder=None, peer=True, note=note,
                  artifacts={"fp32": onnx_path}, load_validation=load_validation if fer.is_dir() else None,
                  evaluate=evaluate), ""
