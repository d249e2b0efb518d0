"""Sources -> features -> runners -> fusion -> publisher, with threads and bounded queues.

One reader thread per source and one inference thread per source:

* EEG and audio are never dropped: the reader cuts sliding windows (``window_s``, ``hop_s``) and
  puts them on a bounded queue with a blocking put, so a slow model pushes back on the source (whose
  own queue blocks too) instead of losing samples. The inference thread takes every window waiting
  (up to ``max_batch``) and runs them as one batch.
* Video: the newest frame wins. The reader keeps one slot; a frame that is replaced before the
  inference thread took it is counted in ``dropped``. Faces are detected at reduced resolution every
  ``detect_every`` frames and tracked in between (``edge.tracker``); all faces of a frame run as one
  batch and each estimate carries its ``track_id``.

Every estimate is published (outbox first) and handed to fusion; a timer thread publishes the fused
state on change and at least every ``state_interval_s``, and ``stats`` every ``stats_interval_s``.

A fault stays where it happened: a block that fails ``firmware_bridge.sources.checks`` (rate zero or
absurd, NaN, wrong shape) is dropped and counted (``malformed``); a change of a board's layout is
taken after FIRST or when it persists, and restarts that source's windows with a log line; a window
whose features or inference raise anything is skipped and counted (``errors``, ``last_error``), and
a source whose windows keep failing is reported (``failing``, a rate-limited log line) while every
next window is tried again. A source thread that dies takes only that source with it.
``stop()`` stops the sources, lets the threads finish every complete window already read, publishes
the last state and leaves the rest to the publisher's flush.
"""

from __future__ import annotations

import importlib
import logging
import queue
import re
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from edge import __version__
from edge.backends import open_runner
from edge.backends.base import Runner
from edge.card import Model, ModelCard
from edge.confidence import ood_score, probabilities
from edge.config import CameraSource, DeviceConfig
from edge.config import Source as SourceConfig
from edge.errors import ConfigError, EmoEdgeError, InputError
from edge.estimate import EmotionState, Estimate, ModelInfo
from edge.fusion import UNKNOWN, Fusion, LabelMap, chance_corrected_confidence, significant_change
from edge.ratelog import RateLimitedLog
from edge.tracker import DetectFn, FaceTracker
from edge.trust import CheckedRunner
from firmware_bridge.sources.base import Sample, Source
from firmware_bridge.sources.checks import LayoutGuard, sample_problem

log = logging.getLogger(__name__)
FeatureFn = Callable[[np.ndarray, float, list[str] | None], np.ndarray]  # window, rate, channel names
FaceInputFn = Callable[[np.ndarray, tuple[int, int, int, int]], np.ndarray]
LATENCY_WINDOW = 2048  # latency samples kept per stage for p50/p99
FAILING_AFTER = 10  # windows in a row that failed: the source is reported as failing


# --- features -------------------------------------------------------------------------------------
def feature_function(
    card: ModelCard, input_shape: tuple[int, ...], settings: Mapping[str, Any] | None = None
) -> FeatureFn:
    """The function that turns one window into one model input item (no batch axis), per the card's recipe.

    Called once per source, so that a recipe can keep per-source state (a subject's running
    normalisation). ``identity`` reshapes the window; ``edge.features.eeg.band_power`` computes
    band power in the card's electrode order and z-scores it (by the wearer's own history once there
    is enough of it, by the card's population statistics until then); ``edge.features.speech.*``
    computes the log-mel window; any other ``module.function`` of ``edge.features`` is called with the
    card's params.
    """
    recipe, params = card.features.recipe, dict(card.features.params)
    name = recipe.removeprefix("edge.features.")
    if name == "identity":
        return _identity(card, input_shape)
    if name == "eeg.band_power":
        return _eeg_band_power(card, input_shape, params)
    if name == "eeg.raw_eeg":
        return RawEEGInput(card, input_shape, params, settings or {})
    if name.startswith("speech."):
        return _speech_log_mel(card, input_shape, params)
    module_name, _, func_name = name.rpartition(".")
    try:
        module = importlib.import_module(f"edge.features.{module_name}") if module_name else None
    except ImportError as exc:
        raise ConfigError(f"model '{card.name}': feature recipe '{recipe}' cannot be imported: {exc}") from None
    func = getattr(module, func_name, None) if module is not None else None
    if func is None:
        raise ConfigError(
            f"model '{card.name}': unknown feature recipe '{recipe}' (expected 'identity' or a function of edge.features)"
        )

    def call(window: np.ndarray, rate: float, channels: list[str] | None) -> np.ndarray:
        return np.asarray(func(window, **params), dtype=np.float32).reshape(input_shape)

    return call


def _identity(card: ModelCard, input_shape: tuple[int, ...]) -> FeatureFn:
    size = int(np.prod(input_shape))

    def identity(window: np.ndarray, rate: float, channels: list[str] | None) -> np.ndarray:
        if window.size != size:
            raise InputError(
                f"model '{card.name}': feature 'identity' needs {size} values per window for input shape "
                f"{list(input_shape)}, the window has {window.size} (shape {list(window.shape)}); check window_s"
            )
        return np.ascontiguousarray(window, dtype=np.float32).reshape(input_shape)

    return identity


def _eeg_band_power(card: ModelCard, input_shape: tuple[int, ...], params: dict[str, Any]) -> FeatureFn:
    from edge.features import eeg

    bands = [tuple(b) for b in params.get("bands", eeg.DEAP_BANDS)]
    electrodes = list(params.get("electrodes", eeg.DEAP_ELECTRODES))
    segment_s = float(params.get("welch_segment_s", 1.0))
    pop_mean = np.asarray(params["population_mean"], np.float64) if "population_mean" in params else None
    pop_std = np.asarray(params["population_std"], np.float64) if "population_std" in params else None
    subject_norm = params.get("trained_mode", "subject-norm") == "subject-norm"
    import scipy.signal  # noqa: F401  - band_power's import, paid at start-up rather than on the first window
    normaliser = eeg.SubjectNormaliser(int(np.prod(input_shape)))

    warned: list[bool] = []

    def band_power(window: np.ndarray, rate: float, channels: list[str] | None) -> np.ndarray:
        generic = channels is None or all(re.fullmatch(r"ch\d+", c) for c in channels)
        if not generic:
            window = eeg.reorder_channels(window, channels or [], electrodes)
        elif window.shape[0] == len(electrodes):
            if not warned:
                warned.append(True)
                log.warning("model '%s': the board does not name its %d EEG channels; assuming the model's order (%s ...)",
                            card.name, window.shape[0], ", ".join(electrodes[:4]))
        else:
            raise InputError(
                f"model '{card.name}': the board names no channels and sends {window.shape[0]}; the model needs "
                f"{len(electrodes)} in the order {', '.join(electrodes)}"
            )
        features = eeg.band_power(window, rate, bands, segment_s)  # type: ignore[arg-type]
        if subject_norm:
            normaliser.update(features)
            if normaliser.ready or pop_mean is None or pop_std is None:
                if normaliser.count < 2:
                    return np.zeros(input_shape, np.float32)  # no spread yet: the model sees an average wearer
                return eeg.standardise(features, normaliser.mean, normaliser.std).reshape(input_shape)
        if pop_mean is not None and pop_std is not None:
            return eeg.standardise(features, pop_mean, pop_std).reshape(input_shape)
        return features.reshape(input_shape)

    return band_power


class RawEEGInput:
    """``edge.features.eeg.raw_eeg``: a headset's raw windows through ``RawEEGFeatures`` (band-pass, decimation,
    the wearer's first-minute normalisation, channel checks), one per source.

    ``annotate`` adds to each estimate what the front end knows about its window (wearer normalisation
    ready or not, flat or saturated channels: confidence scaled down by ``confidence_factor``) and, for
    models with ordinal rating levels (card param ``level_upper_rating``), the binary views and the
    anxious state derived from the level probabilities.
    """

    def __init__(self, card: ModelCard, input_shape: tuple[int, ...], params: dict[str, Any], settings: Mapping[str, Any]) -> None:
        from edge.features.eeg import EMOTIV_ELECTRODES, RawEEGFeatures

        spec = card.inputs[0]
        self.input_shape = input_shape
        self.front = RawEEGFeatures(
            electrodes=list(params.get("electrodes", EMOTIV_ELECTRODES)), model_rate=float(params.get("sample_rate", 128)),
            window_s=float(spec.window_s or 1.0), hop_s=settings.get("hop_s"), norm_s=float(params.get("norm_s", 60.0)),
            clip=float(params.get("clip", 6.0)), band=tuple(params.get("band_hz", (4.0, 45.0))), name=card.name,  # type: ignore[arg-type]
        )
        self.levels = list(params.get("levels", []))
        self.level_upper = params.get("level_upper_rating")
        self._pending: deque[tuple[dict[str, Any], float]] = deque(maxlen=4096)

    def __call__(self, window: np.ndarray, rate: float, channels: list[str] | None) -> np.ndarray:
        out = self.front(window, rate, channels).reshape(self.input_shape)
        self._pending.append((self.front.status(), self.front.confidence_factor()))
        return out

    def stats(self) -> dict[str, Any]:
        return self.front.stats()

    def annotate(self, estimates: list[Estimate]) -> None:
        from edge.evaluation.ordinal import derived_views

        pending = list(self._pending)[-len(estimates):] if estimates else []
        self._pending.clear()
        for est, (status, factor) in zip(estimates, pending, strict=False):
            views: dict[str, Any] = dict(status)
            if self.level_upper and self.levels:
                v = np.array([[est.probs.get(f"valence:{lv}", 0.0) for lv in self.levels]])
                a = np.array([[est.probs.get(f"arousal:{lv}", 0.0) for lv in self.levels]])
                for key, p in derived_views(v, a, self.level_upper).items():
                    views[key] = round(float(p[0]), 4)
                views["anxious_state"] = views["anxious"] >= 0.5
            est.views = views
            est.confidence *= factor


def _speech_log_mel(card: ModelCard, input_shape: tuple[int, ...], params: dict[str, Any]) -> FeatureFn:
    """``edge.features.speech.log_mel+windows``: 16 kHz log-mel of the window, its last model window, loudness-
    normalised where the card says ``loudness_norm`` (as in training), z-scored."""
    from edge.features import speech

    mean = np.asarray(params["population_mean"], np.float32) if "population_mean" in params else None
    std = np.asarray(params["population_std"], np.float32) if "population_std" in params else None
    loud = bool(params.get("loudness_norm", False))
    import scipy.signal  # noqa: F401  - resampling's import, paid at start-up

    def log_mel(window: np.ndarray, rate: float, channels: list[str] | None) -> np.ndarray:
        audio = speech.to_mono_16k(window, int(rate)) if int(rate) != speech.SAMPLE_RATE else window
        mel = speech.windows(speech.log_mel(audio), frames=int(input_shape[-1]))[-1]  # the window ending now
        if loud:
            mel = speech.normalise_loudness(mel)
        if mean is not None and std is not None:
            mel = speech.standardise(mel, mean, std)
        return np.asarray(mel, np.float32).reshape(input_shape)

    return log_mel


def default_face_functions(params: Mapping[str, Any] | None = None) -> tuple[DetectFn, FaceInputFn]:
    """Detection and crop-to-input from ``edge.features.face`` (the same code as training), with the card's params."""
    try:
        face = importlib.import_module("edge.features.face")
    except ImportError as exc:
        raise ConfigError(f"a camera source needs the face features (edge.features.face): {exc}") from None
    params = dict(params or {})
    size = int(params.get("size", face.DEFAULT_SIZE))
    margin = float(params.get("margin", face.DEFAULT_MARGIN))

    def detect(small: np.ndarray) -> list[tuple[int, int, int, int]]:
        return list(face.detect_faces(small, scale=1.15, min_size=20))

    def face_input(frame: np.ndarray, box: tuple[int, int, int, int]) -> np.ndarray:
        return np.asarray(face.face_input(face.crop_face(frame, box, size=size, margin=margin), size), dtype=np.float32)

    return detect, face_input


# --- reading model outputs --------------------------------------------------------------------------
class OutputReader:
    """Model outputs -> per-item (probs, label, confidence, valence, arousal), using the card's labels.

    Two layouts: one output with a value per label (face, speech: softmax over all labels), or
    heads, with labels ``head:value`` and an output ``<head>_logits`` (or ``<head>``) per head (EEG:
    ``valence:negative``, ``valence:positive``, ``arousal:low``, ``arousal:high``). Each head is a
    softmax of its own; the confidence is the mean of the heads' chance-corrected confidences, and
    the label joins the heads' winners. Valence and arousal come from the labels' circumplex
    prototypes, or from an output ``va`` ([valence, arousal] in [-1, 1]) when the model has one.

    Logits become probabilities through ``edge.confidence.probabilities`` with the card's temperature
    (``[confidence]``), the same function ``emoedge eval`` measures. Where the card has ``[ood]``
    statistics, each item's ``embedding`` gets an out-of-distribution score (1.0 = the threshold); above
    it the label is ``unknown`` and the confidence 0, so fusion gives it no weight.
    """

    def __init__(self, card: ModelCard, overrides: Mapping[str, Any] | None = None) -> None:
        self.card = card
        self.labels = list(card.labels)
        self.heads = label_heads(card)  # (output name, label indices, are probabilities)
        # a card may place its own labels on the circumplex: {label: [valence, arousal]}, "none" for an open axis
        card_protos = {k: [None if isinstance(x, str) else x for x in va]
                       for k, va in (card.features.params.get("prototypes") or {}).items()}
        self.label_map = LabelMap.for_labels(self.labels, card.name, {**card_protos, **dict(overrides or {})})
        outputs = {o.name: o for o in card.outputs}
        va = outputs.get("va")
        self.va_output = va.name if va is not None and va.shape and va.shape[-1] == 2 else None
        self.temperatures = {name: card.temperature(name) for name, _, _ in self.heads}
        self.ood = card.ood.stats() if card.ood is not None and card.ood.output in outputs else None
        self.ood_threshold = card.ood.threshold if card.ood is not None else 1.0

    def read(
        self, outputs: Mapping[str, np.ndarray]
    ) -> list[tuple[dict[str, float], str, float, float | None, float | None, float | None]]:
        """Per item: (probs, label, confidence, valence, arousal, ood score or None)."""
        n = len(next(iter(outputs.values())))
        probs = np.zeros((n, len(self.labels)))
        confidences = np.zeros((n, len(self.heads)))
        winners: list[list[str]] = [[] for _ in range(n)]
        for h, (name, idx, are_probs) in enumerate(self.heads):
            values = np.asarray(outputs[name], dtype=np.float64).reshape(n, -1)
            p = values if are_probs else probabilities(values, self.temperatures[name])
            probs[:, idx] = p
            for i in range(n):
                confidences[i, h] = chance_corrected_confidence(p[i])
                winners[i].append(self.labels[idx[int(p[i].argmax())]])
        va = np.asarray(outputs[self.va_output], dtype=np.float64).reshape(n, 2) if self.va_output else None
        ood = None
        if self.ood is not None and self.card.ood is not None and self.card.ood.output in outputs:
            ood = ood_score(np.asarray(outputs[self.card.ood.output]).reshape(n, -1), self.ood, self.ood_threshold)
        items = []
        for i in range(n):
            if va is not None:
                v, a = float(np.clip(va[i, 0], -1, 1)), float(np.clip(va[i, 1], -1, 1))
            else:
                v, a = self.label_map.read(probs[i] / len(self.heads))
            label, confidence = " ".join(winners[i]), float(confidences[i].mean())
            score = None if ood is None else float(ood[i])
            if score is not None and score > 1.0:  # unlike anything it was trained on: no reading, no weight
                label, confidence = UNKNOWN, 0.0
            items.append(({lab: float(x) for lab, x in zip(self.labels, probs[i], strict=True)}, label,
                          confidence, v, a, score))
        return items


def label_heads(card: ModelCard) -> list[tuple[str, list[int], bool]]:
    """Which output carries which labels: (output name, label indices, are probabilities), one per head.

    A ConfigError when the card's labels do not match its outputs (7 labels, 8 logits): ``run`` and
    ``eval`` refuse such a card alike.
    """
    labels = list(card.labels)
    outputs = {o.name: o for o in card.outputs}
    heads: list[tuple[str, list[int], bool]] = []
    single = next((o for o in card.outputs if o.shape and o.shape[-1] == len(labels)
                   and o.name not in ("embedding", "va")), None)
    groups: dict[str, list[int]] = {}
    for i, label in enumerate(labels):
        if ":" in label:
            groups.setdefault(label.split(":", 1)[0], []).append(i)
    if groups and len(groups) > 1:
        for head, idx in groups.items():
            spec = outputs.get(f"{head}_logits") or outputs.get(f"{head}_probs") or outputs.get(head)
            if spec is None or spec.shape[-1] != len(idx):
                raise ConfigError(f"model '{card.name}': labels '{head}:*' need an output '{head}_logits' with "
                                  f"{len(idx)} values; outputs: " + ", ".join(f"{o.name}{o.shape}" for o in card.outputs))
            heads.append((spec.name, idx, _are_probs(spec.meaning, spec.name)))
    elif single is not None:
        heads.append((single.name, list(range(len(labels))), _are_probs(single.meaning, single.name)))
    else:
        raise ConfigError(
            f"model '{card.name}': no output has {len(labels)} values (one per label); outputs: "
            + ", ".join(f"{o.name}{o.shape}" for o in card.outputs)
        )
    return heads


def _are_probs(meaning: str | None, name: str) -> bool:
    text = (meaning or name).lower()
    return "prob" in text and "logit" not in text


# --- windows ----------------------------------------------------------------------------------------
class WindowBuffer:
    """Cuts a stream of blocks into windows of ``size`` samples every ``hop`` samples, never skipping one.

    ``ts`` of a window is the host time of its last sample: the receive time of the newest block
    minus the samples that came after the window's end, at the stream's rate.
    """

    def __init__(self, size: int, hop: int) -> None:
        if size < 1 or hop < 1:
            raise ConfigError(f"window of {size} samples with hop {hop}: both must be at least one sample")
        self.size, self.hop = size, hop
        self._buf: np.ndarray | None = None
        self._start = 0  # absolute sample index of _buf[..., 0]
        self._next = 0  # absolute sample index where the next window starts
        self._total = 0
        self._last_time = 0.0
        self._rate = 1.0

    def push(self, sample: Sample) -> list[tuple[np.ndarray, float]]:
        data = np.asarray(sample.data, dtype=np.float32)
        self._buf = data if self._buf is None else np.concatenate([self._buf, data], axis=-1)
        self._total += data.shape[-1]
        self._last_time, self._rate = sample.host_time, float(sample.sample_rate)
        out = []
        while self._next + self.size <= self._total:
            begin = self._next - self._start
            window = self._buf[..., begin : begin + self.size]
            end = self._next + self.size
            out.append((window.copy(), self._last_time - (self._total - end) / self._rate))
            self._next += self.hop
        drop = self._next - self._start
        if drop > 0:
            self._buf = self._buf[..., min(drop, self._buf.shape[-1]) :]
            self._start += min(drop, self._total - self._start)
        return out

    def reset(self) -> None:
        self._buf, self._start, self._next, self._total = None, 0, 0, 0


class NewestFrame:
    """A one-frame slot: a newer frame replaces one not yet taken, and that skip is counted."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._frame: tuple[Sample, float] | None = None
        self.skipped = 0
        self.closed = False

    def put(self, sample: Sample) -> None:
        with self._cond:
            if self._frame is not None:
                self.skipped += 1
            self._frame = (sample, time.perf_counter())
            self._cond.notify()

    def take(self, timeout: float) -> tuple[Sample, float] | None:
        with self._cond:
            if self._frame is None and not self.closed:
                self._cond.wait(timeout)
            frame, self._frame = self._frame, None
            return frame

    def close(self) -> None:
        with self._cond:
            self.closed = True
            self._cond.notify_all()


# --- per-source bookkeeping --------------------------------------------------------------------------
@dataclass
class StageTimes:
    """Latencies (ms) per stage for p50/p99 in stats."""

    samples: dict[str, deque[float]] = field(default_factory=dict)

    def add(self, stage: str, ms: float) -> None:
        self.samples.setdefault(stage, deque(maxlen=LATENCY_WINDOW)).append(ms)

    def summary(self) -> dict[str, dict[str, float]]:
        out = {}
        for stage, values in list(self.samples.items()):
            if values:
                arr = np.fromiter(values, dtype=np.float64)
                out[stage] = {"p50": round(float(np.percentile(arr, 50)), 3),
                              "p99": round(float(np.percentile(arr, 99)), 3), "n": int(arr.size)}
        return out


@dataclass
class SourceRun:
    """Everything the pipeline keeps for one source."""

    config: SourceConfig
    source: Source
    model: Model
    runner: Runner
    reader: OutputReader
    info: ModelInfo
    max_batch: int
    enabled: bool = True
    windows: WindowBuffer | None = None
    window_s: float | None = None
    queue: queue.Queue[tuple[np.ndarray, float, float]] | None = None
    slot: NewestFrame | None = None
    features: FeatureFn | None = None
    tracker: FaceTracker | None = None
    face_input: FaceInputFn | None = None
    times: StageTimes = field(default_factory=StageTimes)
    sample_rate: float = 0.0
    channels: list[str] | None = None
    received: int = 0  # samples (eeg/audio) or frames (video)
    estimates: int = 0
    errors: int = 0  # windows or faces skipped because features or the model refused them
    consecutive_errors: int = 0
    last_error: str | None = None
    malformed: int = 0  # blocks dropped at the edge (sample_problem, or a layout not (yet) taken)
    layout: LayoutGuard = field(default_factory=LayoutGuard)
    failed: str | None = None  # why this source's thread ended, if it did
    faces: int = 0
    frames: int = 0  # video frames taken by the face path (with or without a face in them)
    latest: Estimate | None = None
    reading_done: threading.Event = field(default_factory=threading.Event)
    last_rate: tuple[float, int, int] = (0.0, 0, 0)  # (time, received, estimates) at the last stats

    @property
    def kind(self) -> str:
        return self.source.kind


# --- the pipeline -----------------------------------------------------------------------------------
class Pipeline:
    """Build from a DeviceConfig; ``start()``, ``stop()``; ``snapshot()`` for the live table."""

    def __init__(
        self,
        config: DeviceConfig,
        publisher: Any | None = None,
        sources: Mapping[str, Source] | None = None,
        detect: DetectFn | None = None,
        face_input: FaceInputFn | None = None,
        on_estimate: Callable[[Estimate], None] | None = None,
        on_state: Callable[[EmotionState], None] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.config = config
        self.publisher = publisher
        self.on_estimate = on_estimate
        self.on_state = on_state
        self.clock = clock
        self.fusion = Fusion(config.fusion)
        self._fusion_lock = threading.Lock()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._started = 0.0
        self.state: EmotionState | None = None
        self._published_state: EmotionState | None = None
        self.errors: list[str] = []
        self._ratelog = RateLimitedLog(log)
        self.runs: dict[str, SourceRun] = {}
        given = dict(sources or {})
        for src in config.sources:
            if not src.enabled:
                continue
            source = given.pop(src.name, None) or make_source(src)
            self.runs[src.name] = self._build_run(src, source, detect, face_input)
        if given:
            raise ConfigError(f"sources {sorted(given)} were given but are not in the config")
        from edge.enroll import Enroller

        # per-person heads: enrollment commands arrive on the publisher's enroll/set topic
        # Profiles belong to the FP32 model (its head and sha256), whichever precision runs it on this device.
        self.enroller = Enroller({name: run.runner.fp32 if isinstance(run.runner, CheckedRunner) else run.model
                                  for name, run in self.runs.items()}, clock=clock)
        if publisher is not None and hasattr(publisher, "on_enroll"):
            publisher.on_enroll = self.enroller.command

    def _build_run(self, src: SourceConfig, source: Source, detect: DetectFn | None, face_input: FaceInputFn | None) -> SourceRun:
        settings = self.config.models[src.model]
        backend = settings.backend or self.config.backend.default

        def open_for(model: Model) -> Runner:
            return open_runner(model, backend=backend, precision=model.precision, threads=self.config.backend.threads,
                               engine_cache=self.config.backend.engine_cache)

        # Anything but FP32 is checked against FP32 on this device before its estimates are published.
        def reference(model: Model) -> Runner:
            return open_runner(model, backend="onnxruntime", threads=self.config.backend.threads)

        runner = CheckedRunner(settings.path or src.model, settings.precision, open_for, reference=reference)
        runner.activate()
        model = runner.model
        reader = OutputReader(model.card, self.config.fusion.prototypes)
        run = SourceRun(src, source, model, runner, reader, runner.model_info(), settings.max_batch)

        def changed(checked: CheckedRunner) -> None:
            run.model, run.info = checked.model, checked.model_info()
            self._report_device_checks()

        runner.on_change = changed
        input_meta = runner.inputs[0]
        item_shape = tuple(int(d) if isinstance(d, int) else -1 for d in input_meta.shape[1:])
        if all(d > 0 for d in item_shape):  # warm up: the first run of a session is slow (allocation, kernels)
            runner.infer({input_meta.name: np.zeros((1, *item_shape), dtype=input_meta.dtype)})
        if source.kind == "video":
            if detect is None or face_input is None:
                default_detect, default_input = default_face_functions(model.card.features.params)
                detect, face_input = detect or default_detect, face_input or default_input
            every = src.detect_every if isinstance(src, CameraSource) else 5
            run.tracker = FaceTracker(detect, detect_every=every, background=True)
            run.face_input = face_input
            run.slot = NewestFrame()
        else:
            spec = model.card.inputs[0]
            window_s = src.window_s or spec.window_s
            if window_s is None:
                raise ConfigError(f"source '{src.name}': no window_s in the config and none in model '{model.name}''s card")
            run.window_s = window_s
            run.features = feature_function(model.card, item_shape, {"window_s": window_s, "hop_s": src.hop_s or window_s / 2})
            run.queue = queue.Queue(maxsize=256)
        return run

    # --- lifecycle ---------------------------------------------------------------------------
    def device_checks(self) -> dict[str, Any]:
        """Per source: the model's precision asked for and in use, and why (for the ``status`` payload)."""
        return {name: run.runner.summary() for name, run in self.runs.items() if isinstance(run.runner, CheckedRunner)}

    def _report_device_checks(self) -> None:
        if self.publisher is not None and hasattr(self.publisher, "set_status_details"):
            self.publisher.set_status_details({"models": self.device_checks()})

    def start(self) -> Pipeline:
        # One thread per source already uses the cores; BLAS threads on top of that oversubscribe them, and
        # under contention OpenBLAS' spinning threads turn the 0.4 ms mel filterbank product into 20+ ms.
        from threadpoolctl import threadpool_limits

        self._blas_limit = threadpool_limits(limits=1, user_api="blas")
        self._report_device_checks()
        self._started = time.time()
        for name, run in self.runs.items():
            run.source.start()
            self._spawn(f"read-{name}", self._read_loop, run)
            self._spawn(f"infer-{name}", self._infer_loop, run)
        self._spawn("state", self._state_loop)
        return self

    def _spawn(self, name: str, target: Callable[..., None], *args: Any) -> None:
        run = next((a for a in args if isinstance(a, SourceRun)), None)

        def guarded() -> None:
            try:
                target(*args)
            except Exception as exc:  # a broken source or model must not hang the others silently
                log.exception("pipeline thread %s failed", name)
                self.errors.append(f"{name}: {type(exc).__name__}: {exc}")
                if run is not None:  # only this source ends; the others keep publishing
                    run.failed = f"{type(exc).__name__}: {exc}"
                    run.reading_done.set()
                    if run.slot is not None:
                        run.slot.close()
                if run is None or all(r.failed for r in self.runs.values()):
                    self._stop.set()

        thread = threading.Thread(target=guarded, name=name, daemon=True)
        thread.start()
        self._threads.append(thread)

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the sources, finish every complete window already read, publish the last state."""
        self._stop.set()
        for run in self.runs.values():
            run.source.stop()
        deadline = time.monotonic() + timeout
        for thread in self._threads:
            thread.join(max(0.1, deadline - time.monotonic()))
        self._publish_state(force=True)
        for run in self.runs.values():
            if run.tracker is not None:
                run.tracker.close()
            run.runner.deactivate()

    def set_enabled(self, name: str, on: bool) -> None:
        """Turn a source on or off (from ``<source>/enabled/set``); a disabled source stops counting in fusion."""
        run = self.runs.get(name)
        if run is None:
            return
        run.enabled = on
        if not on:
            if run.windows is not None:
                run.windows.reset()
            with self._fusion_lock:
                self.fusion.forget(name)
        log.info("source %s %s", name, "enabled" if on else "disabled")

    # --- threads -----------------------------------------------------------------------------
    def _read_loop(self, run: SourceRun) -> None:
        try:
            while True:
                sample = run.source.read(timeout=0.1)
                if sample is None:
                    if run.source.stopped:
                        if not self._stop.is_set():
                            log.warning("source %s ended (end of its file, or its reader failed: see above)", run.config.name)
                        break
                    continue
                problem = sample_problem(sample)
                if problem is not None:
                    self._malformed(run, problem)
                    continue
                run.received += 1 if run.kind == "video" else int(np.asarray(sample.data).shape[-1])
                if not run.enabled:
                    continue
                if run.slot is not None:
                    run.slot.put(sample)
                    continue
                self._window_sample(run, sample)
        finally:
            run.reading_done.set()
            if run.slot is not None:
                run.slot.close()

    def _window_sample(self, run: SourceRun, sample: Sample) -> None:
        """One eeg/audio block into the source's windows; a new layout restarts them, a bad block is dropped."""
        before = run.layout.layout
        verdict = run.layout.check(sample)
        if verdict == "drop":
            self._malformed(run, f"layout {run.layout.describe((int(sample.data.shape[0]) if sample.data.ndim == 2 else 1, float(sample.sample_rate)))} "
                                 f"differs from the stream's {run.layout.describe()}")
            return
        if verdict == "new" and before is not None:
            log.warning("source %s: the board's layout changed from %s to %s; restarting its windows",
                        run.config.name, run.layout.describe(before), run.layout.describe())
            run.windows = None
        run.sample_rate, run.channels = float(sample.sample_rate), sample.channels
        if run.windows is None:
            rate = float(sample.sample_rate)
            size = max(1, round((run.window_s or 1.0) * rate))
            hop = max(1, round((run.config.hop_s or (run.window_s or 1.0) / 2) * rate))
            run.windows = WindowBuffer(size, hop)
        assert run.queue is not None
        try:
            windows = run.windows.push(sample)
        except Exception as exc:  # noqa: BLE001 - the windows restart; the stream goes on
            run.windows = None
            self._malformed(run, f"{type(exc).__name__}: {exc}")
            return
        for window, ts in windows:
            run.queue.put((window, ts, time.perf_counter()))  # blocks: EEG and audio are never dropped

    def _malformed(self, run: SourceRun, why: str) -> None:
        run.malformed += 1
        self._ratelog.warn(f"malformed:{run.config.name}", "source %s: dropped a block (%d so far): %s",
                           run.config.name, run.malformed, why)

    def _infer_loop(self, run: SourceRun) -> None:
        if run.slot is not None:
            self._face_loop(run)
        else:
            self._window_loop(run)

    def _window_loop(self, run: SourceRun) -> None:
        assert run.queue is not None and run.features is not None
        while True:
            try:
                first = run.queue.get(timeout=0.1)
            except queue.Empty:
                if run.reading_done.is_set():
                    return
                continue
            batch = [first]
            while len(batch) < run.max_batch:
                try:
                    batch.append(run.queue.get_nowait())
                except queue.Empty:
                    break
            t0 = time.perf_counter()
            try:
                items = np.stack([run.features(window, run.sample_rate, run.channels) for window, _, _ in batch])
                t1 = time.perf_counter()
                outputs = run.runner.infer({run.runner.inputs[0].name: items})
                t2 = time.perf_counter()
                outputs, person, adapted = self.enroller.process(run.config.name, outputs, [ts for _, ts, _ in batch])
                read = run.reader.read(outputs)
            except Exception as exc:  # noqa: BLE001 - one bad window is skipped and counted, never the end of the run
                self._skip(run, len(batch), exc)
                continue
            run.consecutive_errors = 0
            estimates = []
            for (_, ts, ready), (probs, label, conf, v, a, ood) in zip(batch, read, strict=True):
                lat = {"queue": (t0 - ready) * 1e3, "features": (t1 - t0) * 1e3 / len(batch), "infer": (t2 - t1) * 1e3}
                estimates.append(Estimate(run.config.name, run.model.card.modality, probs, label, conf, v, a, ts,
                                          run.window_s, run.info, lat, profile=person, adapted=adapted, ood=ood))
            annotate = getattr(run.features, "annotate", None)
            if annotate is not None:
                annotate(estimates)
            self._emit(run, estimates, primary=None)

    def _face_loop(self, run: SourceRun) -> None:
        assert run.slot is not None and run.tracker is not None and run.face_input is not None
        while True:
            got = run.slot.take(timeout=0.1)
            if got is None:
                if run.reading_done.is_set():
                    return
                continue
            sample, ready = got
            run.frames += 1
            frame = sample.data
            t0 = time.perf_counter()
            tracks = run.tracker.update(frame)
            t1 = time.perf_counter()
            run.times.add("detect_track", (t1 - t0) * 1e3)
            if not tracks:
                continue
            tracks = tracks[: run.max_batch]
            try:
                items = np.stack([run.face_input(frame, t.box) for t in tracks])
                t2 = time.perf_counter()
                outputs = run.runner.infer({run.runner.inputs[0].name: items})
                t3 = time.perf_counter()
                outputs, person, adapted = self.enroller.process(run.config.name, outputs, [sample.host_time] * len(tracks))
                read = run.reader.read(outputs)
            except Exception as exc:  # noqa: BLE001 - one bad frame is skipped and counted
                self._skip(run, len(tracks), exc)
                continue
            run.consecutive_errors = 0
            run.faces += len(tracks)
            estimates = []
            for track, (probs, label, conf, v, a, ood) in zip(tracks, read, strict=True):
                lat = {"queue": (t0 - ready) * 1e3, "detect_track": (t1 - t0) * 1e3,
                       "features": (t2 - t1) * 1e3 / len(tracks), "infer": (t3 - t2) * 1e3}
                estimates.append(Estimate(run.config.name, run.model.card.modality, probs, label, conf, v, a,
                                          sample.host_time, None, run.info, lat, track_id=track.id,
                                          box=tuple(int(x) for x in track.box),  # type: ignore[arg-type]
                                          profile=person, adapted=adapted, ood=ood))
            self._emit(run, estimates, primary=estimates[0])  # the largest face speaks for the source in fusion

    def _skip(self, run: SourceRun, n: int, exc: Exception) -> None:
        """A window or face the features or the model refused or failed on: counted and logged, the stream goes on.

        Every next window is tried again; after FAILING_AFTER in a row the source is reported as failing.
        """
        run.errors += n
        run.consecutive_errors += n
        run.last_error = f"{type(exc).__name__}: {str(exc)[:300]}" if not isinstance(exc, EmoEdgeError) else str(exc)[:300]
        if run.consecutive_errors >= FAILING_AFTER:
            self._ratelog.warn(f"failing:{run.config.name}", "source %s keeps failing: %d window(s) in a row (%d in all); "
                               "trying every next one: %s", run.config.name, run.consecutive_errors, run.errors, run.last_error)
        else:
            self._ratelog.warn(f"skip:{run.config.name}", "source %s: %d input(s) skipped (%d so far): %s",
                               run.config.name, n, run.errors, run.last_error)

    def _emit(self, run: SourceRun, estimates: list[Estimate], primary: Estimate | None) -> None:
        if not run.enabled:
            return
        for est in estimates:
            done = time.time()
            est.latency_ms["capture_to_publish"] = max(0.0, (done - est.ts) * 1e3)
            if self.publisher is not None:
                self.publisher.publish_estimate(est)
            for stage, ms in est.latency_ms.items():
                run.times.add(stage, ms)
            run.estimates += 1
            run.latest = est
            if self.on_estimate is not None:
                self.on_estimate(est)
        with self._fusion_lock:
            for est in [primary] if primary is not None else estimates:
                self.fusion.update(est)

    def _state_loop(self) -> None:
        mqtt = self.config.mqtt
        last_stats = time.monotonic()
        while not self._stop.wait(0.1):
            self._publish_state()
            if time.monotonic() - last_stats >= mqtt.stats_interval_s:
                last_stats = time.monotonic()
                if self.publisher is not None:
                    self.publisher.publish_stats(self.stats())

    def _publish_state(self, force: bool = False) -> None:
        now = self.clock()
        with self._fusion_lock:
            if not self.fusion._latest:  # noqa: SLF001 - nothing to say before the first estimate
                return
            state = self.fusion.state(now)
        self.state = state
        last = self._published_state
        due = last is None or force or significant_change(last, state) or (
            now - self._published_at >= self.config.mqtt.state_interval_s
        )
        if due:
            self._published_state, self._published_at = state, now
            if self.publisher is not None:
                self.publisher.publish_state(state)
            if self.on_state is not None:
                self.on_state(state)

    _published_at = 0.0

    # --- reporting ---------------------------------------------------------------------------
    def stats(self) -> dict[str, Any]:
        now = time.time()
        sources = {}
        for name, run in self.runs.items():
            t_prev, r_prev, e_prev = run.last_rate
            dt = now - (t_prev or self._started)
            rate = (run.received - r_prev) / dt if dt > 0 else 0.0
            est_rate = (run.estimates - e_prev) / dt if dt > 0 else 0.0
            run.last_rate = (now, run.received, run.estimates)
            dropped = (run.slot.skipped if run.slot is not None else 0) + run.source.dropped
            entry: dict[str, Any] = {
                "kind": run.kind, "enabled": run.enabled, "model": run.model.name, "backend": run.info.backend,
                "precision": run.info.precision, "device_check": run.runner.status()
                if isinstance(run.runner, CheckedRunner) else None, "rate_hz": round(rate, 2), "estimates": run.estimates,
                "estimate_hz": round(est_rate, 2), "dropped": int(dropped), "errors": run.errors, "latency_ms": run.times.summary(),
                "link": _jsonable(run.source.stats()),
                "malformed": run.malformed, "layout_changes": run.layout.changes,
                "failing": run.consecutive_errors >= FAILING_AFTER or run.failed is not None,
            }
            if run.last_error is not None:
                entry["last_error"] = run.last_error
            if run.failed is not None:
                entry["failed"] = run.failed
            signal = getattr(run.features, "stats", None)
            if signal is not None:
                entry["signal"] = _jsonable(signal())
            if run.tracker is not None:
                entry["faces"] = run.faces
                entry["frames"] = run.frames
                entry["tracks"] = len(run.tracker.tracks)
            sources[name] = entry
        out: dict[str, Any] = {"uptime_s": round(now - self._started, 3), "version": __version__, "sources": sources}
        if self.state is not None:
            out["fusion"] = {"label": self.state.label, "confidence": round(self.state.confidence, 4)}
        return out

    def snapshot(self) -> list[dict[str, Any]]:
        """One row a source for the live table."""
        rows = []
        for name, run in self.runs.items():
            lat = run.times.summary().get("capture_to_publish", {})
            est = run.latest
            rows.append({
                "source": name, "kind": run.kind, "enabled": run.enabled, "received": run.received,
                "estimates": run.estimates, "dropped": (run.slot.skipped if run.slot else 0) + run.source.dropped,
                "p50": lat.get("p50"), "p99": lat.get("p99"), "backend": run.info.backend,
                "latest": f"{est.label} {est.confidence:.2f}" if est else "-",
            })
        return rows


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, int | float | str | bool) or value is None:
        return value
    return str(value)


# --- sources from the config -------------------------------------------------------------------------
def make_source(src: SourceConfig) -> Source:
    """The firmware_bridge source for one ``[[sources]]`` entry."""
    try:
        from firmware_bridge.sources import make_source as firmware_make_source  # type: ignore[attr-defined]
    except ImportError:
        raise EmoEdgeError(
            f"source '{src.name}' ({src.kind}): the firmware_bridge sources are not available in this install"
        ) from None
    return firmware_make_source(src)  # type: ignore[no-any-return]
