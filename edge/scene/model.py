"""The scene model at run time: the encoder runner, the decoder runner and what the card ships beside them
(vocabulary, training-sentence hashes, text scorer), behind two calls: ``estimate`` and ``explain``."""

from __future__ import annotations

import logging
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from edge.card import GraphSpec, Model, artifact_name
from edge.errors import ModelError
from edge.features.scene import DEFAULT_SIZE, scene_input, shows_no_scene
from edge.fusion import UNKNOWN
from edge.scene.data import EMOTIONS
from edge.scene.decode import Explanation, SceneDecoder, condition
from edge.scene.text import Vocab, load_hashes

if TYPE_CHECKING:  # edge.pipeline imports this module: its reader comes in at run time
    from edge.pipeline.readout import OutputReader, Reading

log = logging.getLogger(__name__)


@dataclass
class SceneEstimate:
    probs: np.ndarray  # (7,) over EMOTIONS
    va: np.ndarray  # (2,) in [-1, 1]
    embedding: np.ndarray

    @property
    def label(self) -> str:
        return EMOTIONS[int(np.argmax(self.probs))]

    @property
    def cond(self) -> np.ndarray:
        return condition(self.probs[None], self.va[None], self.embedding[None])[0]


def estimate_of(outputs: dict[str, np.ndarray], i: int = 0) -> SceneEstimate:
    """Item ``i`` of the encoder's outputs with the plain softmax of its logits: the distribution the decoder was
    trained on (the card's temperature is for the published confidence, not for the decoder's condition)."""
    from edge.confidence import softmax

    probs = softmax(np.asarray(outputs["logits"][i : i + 1], np.float64))[0]
    return SceneEstimate(probs.astype(np.float32), np.asarray(outputs["va"][i], np.float32),
                         np.asarray(outputs["embedding"][i], np.float32))


def decoder_spec(model: Model) -> GraphSpec:
    spec = next((g for g in model.card.graphs if g.name == "decoder"), None)
    if spec is None:
        raise ModelError(f"model '{model.name}' has no decoder graph in its card ({model.card_path})")
    return spec


class SceneModel:
    """Context manager holding both runners. ``precision`` applies to the encoder; the decoder runs FP32
    unless ``decoder_precision`` names another artifact (decoder.fp16.onnx). ``backend`` applies to both:
    with ``tensorrt`` the decoder runs the cached engine of its file (``emoedge build scene --graph decoder``),
    whose profile must hold the beam and length cap (an InputError before decoding otherwise); with ``auto``
    that engine where one fits, else ONNX Runtime."""

    def __init__(self, model: Model, backend: str = "onnxruntime", threads: int = 1, beam: int | None = None,
                 max_tokens: int | None = None, block_copies: bool = True, decoder_precision: str = "fp32",
                 guidance: float | None = None, encoder: Any = None, sharpen: float | None = None,
                 decoder_path: Path | None = None, decoder_runner: Any = None,
                 reader: OutputReader | None = None) -> None:
        self.model = model
        self.backend, self.threads = backend, threads
        self.spec = decoder_spec(model) if model.card.graphs else None
        p = self.spec.params if self.spec else {}
        self.beam = beam if beam is not None else int(p.get("beam", 1))
        self.max_tokens = max_tokens if max_tokens is not None else int(p.get("max_tokens", 24))
        self.block_copies = block_copies
        self.decoder_precision = decoder_precision
        self.decoder_path = decoder_path  # a decoder file to run instead of the card's (the quantization gate's candidate)
        self.guidance = guidance
        self.sharpen = sharpen
        self.size = int(model.card.features.params.get("size", DEFAULT_SIZE))
        self._stack = ExitStack()
        self.encoder: Any = encoder  # an active runner of the encoder (the pipeline's checked one), else opened here
        self.decoder_runner: Any = decoder_runner  # an active runner of a decoder (an engine under test), else opened here
        self.decoder: SceneDecoder | None = None
        self.vocab: Vocab | None = None
        # the card's temperature and OOD gate, as every source reads (the pipeline hands in its source's reader)
        if reader is None:
            from edge.pipeline.readout import OutputReader

            reader = OutputReader(model.card)
        self.reader = reader

    def __enter__(self) -> SceneModel:
        from edge.backends import open_runner

        if self.encoder is None:
            self.encoder = self._stack.enter_context(open_runner(self.model, backend=self.backend, threads=self.threads))
        if self.spec is not None:
            folder = self.model.folder
            p = self.spec.params
            path = self.decoder_path or folder / artifact_name(self.spec.name, self.decoder_precision)
            if not path.is_file():
                raise ModelError(f"{path}: the scene decoder is missing")
            if self.decoder_path is None and self.decoder_precision != "fp32":
                self._check_decoder_artifact(path)
            self.vocab = Vocab.load(folder / p.get("vocab", "vocab.txt"))
            hashes = load_hashes(folder / p.get("train_hashes", "train_hashes.npy")) if self.block_copies else set()
            guidance = self.guidance if self.guidance is not None else float(p.get("guidance", 0.0))
            if self.decoder_runner is None:
                self.decoder_runner = self._stack.enter_context(self._open_decoder(path, guidance))
            self.decoder = SceneDecoder(self.decoder_runner, self.vocab, int(p["layers"]), int(p["heads"]),
                                        int(p["head_dim"]), hashes, max_tokens=self.max_tokens, beam=self.beam,
                                        guidance=guidance,
                                        sharpen=self.sharpen if self.sharpen is not None else float(p.get("sharpen", 1.0)),
                                        arousal_condition=tuple(p.get("arousal_condition", (1.0, 0.0))))
        return self

    def _open_decoder(self, path: Path, guidance: float) -> Any:
        """ONNX Runtime on ``path``, or (``backend`` tensorrt or auto) the decoder's engine, its profile checked."""
        from edge.backends.ort import OnnxRuntimeRunner
        from edge.errors import BackendUnavailable, InputError

        if self.backend != "onnxruntime" and self.decoder_path is None:
            from edge.export.scene_engine import open_decoder_engine

            try:
                return open_decoder_engine(self.model, self.decoder_precision, self.beam, self.max_tokens, guidance)
            except (BackendUnavailable, InputError) as exc:
                if self.backend == "tensorrt":
                    raise
                log.info("scene decoder: TensorRT not used: %s", exc)
        return OnnxRuntimeRunner(path, threads=self.threads)

    def _check_decoder_artifact(self, path: Path) -> None:
        """An FP16/INT8 decoder runs only as the file its gate passed (``emoedge quantize scene --graph decoder``)."""
        from edge.card import sha256_file

        assert self.spec is not None
        record = next((a for a in self.spec.artifacts if a.precision == self.decoder_precision), None)
        if record is None or not record.passed:
            raise ModelError(f"{path}: no passed gate record for the {self.decoder_precision} decoder in "
                             f"{self.model.card_path} (emoedge quantize {self.model.name} --graph decoder "
                             f"--precision {self.decoder_precision} --data ...)")
        if sha256_file(path) != record.sha256:
            raise ModelError(f"{path}: sha256 differs from the gate's record in {self.model.card_path}; remake it")

    def __exit__(self, *exc: object) -> None:
        self._stack.close()

    def estimate_batch(self, inputs: np.ndarray) -> list[SceneEstimate]:
        out = self.encoder.infer({"image": inputs.astype(np.float32)})
        return [estimate_of(out, i) for i in range(len(inputs))]

    def estimate(self, image: np.ndarray) -> SceneEstimate:
        """One BGR frame -> its estimate (the encoder only: this goes out before the explanation)."""
        return self.estimate_batch(scene_input(image, self.size)[None])[0]

    def reading(self, item: np.ndarray, outputs: dict[str, np.ndarray]) -> Reading:
        """What is published for one encoder input ``(3, S, S)`` and its outputs (batch of one): probabilities
        with the card's temperature, the OOD gate's ``unknown``, and ``unknown`` for a flat frame (a covered
        lens), which the OOD gate alone lets through. ``emoedge run`` and ``emoedge explain`` both read so."""
        reading = self.reader.read(outputs)[0]
        if shows_no_scene(item):
            reading = reading._replace(label=UNKNOWN, confidence=0.0)
        return reading

    def look(self, image: np.ndarray) -> tuple[Reading, SceneEstimate]:
        """One BGR frame -> its published reading and the estimate the decoder is conditioned on."""
        item = scene_input(image, self.size)
        outputs = self.encoder.infer({"image": item[None]})
        return self.reading(item, outputs), estimate_of(outputs)

    def explain(self, estimate: SceneEstimate) -> Explanation:
        if self.decoder is None:
            raise ModelError(f"model '{self.model.name}' has no decoder: it can estimate but not explain")
        return self.decoder.explain(estimate.cond)
