"""Model cards (``models/<name>/card.toml``) and loading a model folder against its card.

The card is the contract between a model file and everything that uses it: what goes in, what
comes out, what the outputs mean, and how well it does (metrics written by ``emoedge eval``,
never typed in). Loading checks the ONNX graph against the card and records the file's sha256.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, cast

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from edge.errors import CardError, ModelError
from edge.paths import atomic_write, models_dir

Dtype = Literal["float32", "float16", "int64", "int32", "int8", "uint8", "bool"]
PRECISION_FILES = {"fp32": "model.onnx", "fp16": "model.fp16.onnx", "int8": "model.int8.onnx"}


def artifact_name(graph: str, precision: str) -> str:
    """File name of a graph at a precision: ``model.onnx``, ``encoder.fp16.onnx``, ..."""
    return PRECISION_FILES[precision].replace("model", graph, 1)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class TensorSpec(_Strict):
    """One named input or output. A string dimension (``"batch"``) is dynamic."""

    name: str
    shape: list[int | str]
    dtype: Dtype = "float32"
    layout: str | None = Field(default=None, description="e.g. NCHW, NC, N1MT (mel x time)")
    normalisation: str | None = None
    sample_rate: float | None = Field(default=None, gt=0)
    window_s: float | None = Field(default=None, gt=0)
    meaning: str | None = Field(default=None, description="for outputs: logits over labels, valence/arousal in [-1, 1], ...")


class FeatureRecipe(_Strict):
    """Which function of ``edge.features`` turns a sample into this model's input, with its parameters."""

    recipe: str
    params: dict[str, Any] = Field(default_factory=dict)


class TrainingInfo(_Strict):
    data: str = Field(description="data set(s) and split used")
    terms: str = Field(description="licence or terms of the data, which bind the weights")
    command: str | None = Field(default=None, description="the command that trained it")
    teacher: str | None = None
    seconds: float | None = Field(default=None, ge=0, description="wall time of the training run")
    seed: int | None = None
    holdout: dict[str, Any] = Field(
        default_factory=dict,
        description="what the training run held out for validation (e.g. subjects or actors); evaluators read it",
    )


class QuantizationPolicy(_Strict):
    max_loss_points: float = Field(default=1.0, ge=0, le=100, description="largest metric loss allowed for FP16/INT8, in points")
    metric: str = Field(default="accuracy", description="the task metric the gate compares")


class MetricRecord(_Strict):
    """Metrics as written by one run of ``emoedge eval``."""

    command: str
    data: str
    split: str
    backend: str = "onnxruntime"
    precision: str = "fp32"
    mode: str = Field(default="default", description="e.g. per-speaker normalisation")
    measured_at: str
    values: dict[str, Any]


class CpuVerification(_Strict):
    """One instruction set an artifact was checked on (``tools/cpu_check.py --write-card``), natively or emulated."""

    target: str = Field(description="instruction set and how it was run, e.g. 'x86_64 avx2 ... (qemu-x86_64 -cpu Haswell)'")
    onnxruntime: str
    metric: str
    loss_points: float
    top1_agreement: float
    n: int = Field(ge=0)
    passed: bool = Field(description="within the allowance on these samples, or the same outputs as the first target "
                         "(native) while the artifact's full-validation gate passed: a slice is too small to judge alone")
    max_diff_vs_native: float | None = Field(default=None, description="largest output difference from the first target")
    command: str
    measured_at: str


class ArtifactRecord(_Strict):
    """A derived artifact (FP16, INT8) and the result of its accuracy gate (written by ``emoedge quantize``).

    ``passed = false`` records a refused candidate (its sha256, the loss): no such file was written.
    """

    precision: Literal["fp16", "int8"]
    file: str
    sha256: str
    source_sha256: str | None = Field(default=None, description="sha256 of the model.onnx it was made from (stale when that changes)")
    metric: str
    fp32: float
    value: float
    loss_points: float
    top1_agreement: float
    passed: bool
    command: str
    measured_at: str
    calibration: str | None = Field(default=None, description="calibration set (folder and samples sha256) of an INT8 artifact")
    method: str | None = Field(default=None, description="INT8 calibration method: minmax, entropy, percentile")
    op_types: str | None = Field(default=None, description="INT8: which operators were quantized (weighted, all)")
    data: str | None = Field(default=None, description="the samples the gate measured on")
    n: int | None = Field(default=None, ge=0, description="how many samples the gate measured")
    allowance: float | None = Field(default=None, description="max_loss_points of the card when measured")
    per_head: dict[str, dict[str, float]] = Field(
        default_factory=dict, description="metric per label head (EEG valence and arousal): fp32, value, loss_points"
    )
    note: str | None = Field(default=None, description="why the gate fell back, or why the artifact was refused")
    recipe: str | None = Field(default=None, description="INT8: the quantization recipe (types, ranges, format)")
    verified_on: list[CpuVerification] = Field(
        default_factory=list, description="instruction sets this artifact was checked on against FP32"
    )


class ConfidenceRecord(_Strict):
    """Temperatures that turn each logits output into calibrated probabilities (``edge.confidence``),
    fitted by ``emoedge eval NAME --data DIR --fit-temperature --write-card``; the runtime applies them."""

    method: Literal["temperature"] = "temperature"
    temperatures: dict[str, float] = Field(description="logits output name -> temperature (> 1 softens, < 1 sharpens)")
    command: str
    data: str
    fit: str = Field(description="which samples the temperatures were fitted on, and how the 'after' figures were kept honest")
    measured_at: str
    values: dict[str, Any] = Field(default_factory=dict, description="ece and mean_confidence before and after, per output")


class OodRecord(_Strict):
    """Out-of-distribution statistics of the ``embedding`` output (``edge.confidence.ood_distance``):
    the training data's mean, whitening projection and class centres, optionally a background direction,
    and the threshold. Written by ``emoedge eval NAME --data DIR --fit-ood --ood OUTLIER_DIR
    [--ood-background DIR] --write-card``."""

    method: Literal["mahalanobis"] = "mahalanobis"
    output: str = "embedding"
    threshold: float = Field(gt=0, description="distance above which an estimate says 'unknown'")
    transform: Literal["none", "l2"] = Field(default="none", description="l2: embeddings scaled to unit length first")
    minor: int = Field(default=0, ge=0, description="lowest-variance axes of the shared covariance measured along")
    major: int = Field(default=0, ge=0, description="highest-variance axes measured along")
    components: int = Field(ge=1)
    # vectors as space-separated numbers (6 significant digits), a matrix as one such string per row,
    # so that a few thousand numbers take a few dozen lines of the card
    mean: str
    projection: list[str] = Field(description="k x D: principal axes of the training embeddings, whitened")
    centres: list[str] = Field(description="K x k: class centres in the whitened subspace")
    classes: list[int] = Field(default_factory=list)
    background: str | None = Field(default=None, description="D weights of the background direction "
                                   "(edge.confidence.fit_background), None: the distance alone")
    background_bias: float | None = None
    command: str
    data: str = Field(description="training statistics from; threshold chosen on")
    measured_at: str
    values: dict[str, Any] = Field(default_factory=dict, description="ood_auroc per outlier kind, rates at the threshold")

    @model_validator(mode="after")
    def _shapes_agree(self) -> OodRecord:
        """Every vector of the statistics has the length the others imply (a damaged card says which does not)."""
        def width(line: str, what: str) -> int:
            try:
                return len([float(v) for v in line.split()])
            except ValueError as e:
                raise ValueError(f"{what}: not a list of numbers ({e})") from None

        dim = width(self.mean, "mean")
        if len(self.projection) != self.components:
            raise ValueError(f"projection has {len(self.projection)} rows, components says {self.components}")
        for i, row in enumerate(self.projection):
            if width(row, f"projection row {i}") != dim:
                raise ValueError(f"projection row {i} has {width(row, '')} numbers, the mean {dim}")
        for i, row in enumerate(self.centres):
            if width(row, f"centres row {i}") != self.components:
                raise ValueError(f"centres row {i} has {width(row, '')} numbers, components says {self.components}")
        if self.background is not None and width(self.background, "background") != dim:
            raise ValueError(f"background has {width(self.background, '')} weights, the mean {dim}")
        return self

    def stats(self) -> dict[str, Any]:
        """The statistics as arrays, for ``edge.confidence.mahalanobis``."""
        import numpy as np

        def rows(lines: list[str]) -> Any:
            return np.array([np.array(line.split(), dtype=np.float64) for line in lines])

        background = None if self.background is None else (
            np.array(self.background.split(), dtype=np.float64), self.background_bias or 0.0)
        return {"mean": np.array(self.mean.split(), dtype=np.float64), "projection": rows(self.projection),
                "centres": rows(self.centres), "transform": self.transform, "background": background}

    @staticmethod
    def encode(vector: Any) -> str:
        """A vector as the card stores it (space-separated, 6 significant digits)."""
        return " ".join(f"{float(x):.6g}" for x in vector)


class GraphSpec(_Strict):
    """A second graph of a model (the scene decoder): its file, tensors and what drives it."""

    name: str = Field(pattern=r"^[a-z0-9_\-]+$", description="file stem: NAME.onnx beside the card")
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    parameters: int = Field(ge=0)
    flops: int | None = Field(default=None, ge=0, description="multiply-adds x 2 of one run (one token for a decoder)")
    params: dict[str, Any] = Field(default_factory=dict, description="e.g. vocabulary file, layers, heads, length cap")
    artifacts: list[ArtifactRecord] = Field(
        default_factory=list, description="this graph's FP16/INT8 files and their gates (edge.export.quantize_decoder)"
    )


class ModelCard(_Strict):
    name: str = Field(pattern=r"^[a-z0-9_\-]+$")
    version: str
    modality: Literal["face", "speech", "eeg", "vision", "text"]
    description: str = ""
    status: Literal["trained", "untrained"] = Field(default="trained", description="untrained: architecture and recipe only, no weights shipped"
    )
    labels: list[str] = Field(default_factory=list)
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    features: FeatureRecipe
    parameters: int = Field(ge=0)
    training: TrainingInfo
    quantization: QuantizationPolicy = QuantizationPolicy()
    metrics: list[MetricRecord] = Field(default_factory=list)
    artifacts: list[ArtifactRecord] = Field(default_factory=list)
    notes: str = ""
    confidence: ConfidenceRecord | None = None
    ood: OodRecord | None = None
    graph: str = Field(default="model", pattern=r"^[a-z0-9_\-]+$",
                       description="file stem of the main graph (model.onnx; the scene model's encoder.onnx)")
    flops: int | None = Field(default=None, ge=0, description="multiply-adds x 2 of the main graph for one sample")
    graphs: list[GraphSpec] = Field(default_factory=list, description="further graphs the model runs (scene: the decoder)")
    explain: dict[str, Any] = Field(default_factory=dict, description="scene: explanation metrics and decoding settings")

    def temperature(self, output: str) -> float:
        """The calibration temperature of a logits output (1.0 where none was fitted)."""
        return float(self.confidence.temperatures.get(output, 1.0)) if self.confidence else 1.0

    def input(self, name: str) -> TensorSpec:
        return next(t for t in self.inputs if t.name == name)

    def output(self, name: str) -> TensorSpec:
        return next(t for t in self.outputs if t.name == name)


def load_card(path: str | os.PathLike[str]) -> ModelCard:
    """Read and validate a ``card.toml``."""
    from edge.config import load_toml_text

    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise CardError(f"{p}: model card not found") from None
    except UnicodeDecodeError as exc:
        raise CardError(f"{p}: not a text file (byte {exc.start} is not UTF-8)") from None
    except OSError as exc:
        raise CardError(f"{p}: cannot read the model card ({exc.strerror or exc})") from None
    data = load_toml_text(text, str(p), CardError)
    try:
        return ModelCard.model_validate(data)
    except ValidationError as exc:
        lines = [f"  {'.'.join(str(x) for x in e['loc'])}: {e['msg']}" for e in exc.errors()]
        raise CardError(f"{p}: invalid model card:\n" + "\n".join(lines)) from None


def save_card(card: ModelCard, path: str | os.PathLike[str]) -> None:
    """Write a card back (after eval or quantize added records), atomically."""
    import tomli_w

    p = Path(path)
    data = _without_none(card.model_dump(mode="json", exclude_none=True))
    with atomic_write(p, "w") as f:
        f.write(tomli_w.dumps(data))


def _without_none(value: Any) -> Any:
    """TOML has no null: drop None entries of nested tables (a recall of a class the data lacks)."""
    if isinstance(value, dict):
        return {k: _without_none(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_without_none(v) for v in value]
    return value


def sha256_file(path: str | os.PathLike[str], chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


_ONNX_DTYPES = {1: "float32", 10: "float16", 7: "int64", 6: "int32", 3: "int8", 2: "uint8", 9: "bool"}


def onnx_io(path: str | os.PathLike[str]) -> tuple[list[TensorSpec], list[TensorSpec]]:
    """Inputs and outputs of an ONNX file as TensorSpecs (dynamic dims as their symbolic names)."""
    import onnx

    try:
        proto = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # onnx raises DecodeError, ValueError, ... for a corrupt file
        raise ModelError(f"{path}: not a readable ONNX model ({type(exc).__name__}: {exc})") from None
    initializers = {i.name for i in proto.graph.initializer}

    def spec(value: Any) -> TensorSpec:
        t = value.type.tensor_type
        dims: list[int | str] = [d.dim_value if d.HasField("dim_value") else (d.dim_param or "?") for d in t.shape.dim]
        dtype = cast(Dtype, _ONNX_DTYPES.get(t.elem_type, "float32"))
        return TensorSpec(name=value.name, shape=dims, dtype=dtype)

    inputs = [spec(v) for v in proto.graph.input if v.name not in initializers]
    return inputs, [spec(v) for v in proto.graph.output]


def check_against_card(card: ModelCard, onnx_path: Path, card_path: Path, allow_dtype: Dtype | None = None) -> None:
    """Raise CardError naming both files if the ONNX inputs/outputs differ from the card."""
    inputs, outputs = onnx_io(onnx_path)
    problems: list[str] = []
    for kind, declared, actual in (("input", card.inputs, inputs), ("output", card.outputs, outputs)):
        by_name = {t.name: t for t in actual}
        for spec in declared:
            got = by_name.get(spec.name)
            if got is None:
                problems.append(f"{kind} '{spec.name}' is in the card but not in the model (model has {sorted(by_name)})")
                continue
            if got.dtype != spec.dtype and got.dtype != allow_dtype:
                problems.append(f"{kind} '{spec.name}': card says {spec.dtype}, model has {got.dtype}")
            if len(got.shape) != len(spec.shape) or any(
                isinstance(a, int) and isinstance(b, int) and a != b for a, b in zip(spec.shape, got.shape, strict=False)
            ):
                problems.append(f"{kind} '{spec.name}': card says shape {spec.shape}, model has {got.shape}")
        extra = set(by_name) - {t.name for t in declared}
        if extra:
            problems.append(f"model has {kind}(s) {sorted(extra)} that the card does not declare")
    if problems:
        raise CardError(f"{card_path} does not match {onnx_path}:\n  " + "\n  ".join(problems))


@dataclass
class Model:
    """A model folder whose card has been checked against its ONNX file."""

    folder: Path
    card: ModelCard
    precision: str
    path: Path
    sha256: str
    extras: dict[str, Any] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.card.name

    @property
    def card_path(self) -> Path:
        return self.folder / "card.toml"


def resolve_model_folder(name_or_path: str | os.PathLike[str], models: str | os.PathLike[str] | None = None) -> Path:
    """A model name (``face``) looks in the models folder; anything with a slash is a path."""
    p = Path(name_or_path)
    if p.is_dir():
        return p
    candidate = models_dir(models) / str(name_or_path)
    if candidate.is_dir():
        return candidate
    root = models_dir(models)
    known = sorted(d.name for d in root.iterdir() if (d / "card.toml").exists()) if root.is_dir() else []
    raise ModelError(f"no model folder '{name_or_path}' (looked in {root}; models there: {', '.join(known) or 'none'})")


def load_model(
    name_or_path: str | os.PathLike[str], precision: str = "fp32", models: str | os.PathLike[str] | None = None
) -> Model:
    """Load a model folder: validate the card, find the artifact for ``precision``, check it, hash it."""
    if precision not in PRECISION_FILES:
        raise ModelError(f"unknown precision '{precision}' (expected one of {', '.join(PRECISION_FILES)})")
    folder = resolve_model_folder(name_or_path, models)
    card_path = folder / "card.toml"
    card = load_card(card_path)
    if card.status == "untrained":
        raise ModelError(
            f"model '{card.name}' ships no trained weights ({card_path}: status = untrained). "
            f"Train it first: {card.training.command or 'emoedge train ' + card.name}"
        )
    path = folder / artifact_name(card.graph, precision)
    if not path.exists():
        hint = f"; make it with: emoedge quantize {card.name} --precision {precision}" if precision != "fp32" else ""
        raise ModelError(f"{path}: no {precision} artifact for model '{card.name}'{hint}")
    # FP16 artifacts keep FP32 inputs and outputs, so the card's dtypes hold for every precision.
    check_against_card(card, path, card_path)
    return Model(folder=folder, card=card, precision=precision, path=path, sha256=sha256_file(path))


def list_models(models: str | os.PathLike[str] | None = None) -> list[Path]:
    """Model folders (those with a card) in the models folder."""
    root = models_dir(models)
    if not root.is_dir():
        return []
    return sorted(d for d in root.iterdir() if (d / "card.toml").is_file())
