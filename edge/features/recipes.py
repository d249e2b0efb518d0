"""The feature recipe registry: the card's ``[features] recipe`` names the function that turns one window into one
model input, and every caller (``emoedge run``, ``eval``, the quantization gate, ``bench``) builds it here.

``build_features(card, input_shape)`` returns a ``FeatureFn`` for one source (a recipe may keep per-source state:
a wearer's running normalisation). Recipes are looked up by name without the ``edge.features.`` prefix
(``RECIPES``); any other ``module.function`` of ``edge.features`` is called with the card's params.
"""

from __future__ import annotations

import importlib
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from edge.card import ModelCard
from edge.errors import ConfigError, InputError
from edge.estimate import Estimate

if TYPE_CHECKING:
    from edge.tracker import Box, DetectFn

FeatureFn = Callable[[np.ndarray, float, "list[str] | None"], np.ndarray]  # window, rate, channel names -> one item
FaceInputFn = Callable[[np.ndarray, "Box"], np.ndarray]  # a frame and a face box -> one item
RecipeBuilder = Callable[[ModelCard, tuple[int, ...], dict[str, Any], Mapping[str, Any]], FeatureFn]


def identity(card: ModelCard, input_shape: tuple[int, ...], params: dict[str, Any], settings: Mapping[str, Any]) -> FeatureFn:
    """``identity``: the window itself, reshaped to the input (its size must match)."""
    size = int(np.prod(input_shape))

    def call(window: np.ndarray, rate: float, channels: list[str] | None) -> np.ndarray:
        if window.size != size:
            raise InputError(
                f"model '{card.name}': feature 'identity' needs {size} values per window for input shape "
                f"{list(input_shape)}, the window has {window.size} (shape {list(window.shape)}); check window_s"
            )
        return np.ascontiguousarray(window, dtype=np.float32).reshape(input_shape)

    return call


def eeg_band_power(card: ModelCard, input_shape: tuple[int, ...], params: dict[str, Any],
                   settings: Mapping[str, Any]) -> FeatureFn:
    """``eeg.band_power``: ``edge.features.eeg.BandPowerInput`` with the card's electrodes, bands and statistics."""
    from edge.features import eeg

    front = eeg.BandPowerInput(
        int(np.prod(input_shape)), electrodes=list(params.get("electrodes", eeg.DEAP_ELECTRODES)),
        bands=[(str(b[0]), float(b[1]), float(b[2])) for b in params.get("bands", eeg.DEAP_BANDS)],
        segment_s=float(params.get("welch_segment_s", 1.0)),
        population_mean=np.asarray(params["population_mean"], np.float64) if "population_mean" in params else None,
        population_std=np.asarray(params["population_std"], np.float64) if "population_std" in params else None,
        subject_norm=params.get("trained_mode", "subject-norm") == "subject-norm", name=card.name,
    )
    import scipy.signal  # noqa: F401  - band_power's import, paid at start-up rather than on the first window

    def call(window: np.ndarray, rate: float, channels: list[str] | None) -> np.ndarray:
        return front(window, rate, channels).reshape(input_shape)

    return call


class RawEEGInput:
    """``eeg.raw_eeg``: a headset's raw windows through ``RawEEGFeatures`` (band-pass, decimation, the wearer's
    first-minute normalisation, channel checks), one per source.

    ``annotate`` adds to each estimate what the front end knows about its window (wearer normalisation
    ready or not, flat or saturated channels: confidence scaled down by ``confidence_factor``) and, for
    models with ordinal rating levels (card param ``level_upper_rating``), the binary views and the
    anxious state derived from the level probabilities.
    """

    def __init__(self, card: ModelCard, input_shape: tuple[int, ...], params: dict[str, Any], settings: Mapping[str, Any]) -> None:
        from edge.features.eeg_raw import EMOTIV_ELECTRODES, RawEEGFeatures

        spec = card.inputs[0]
        band = params.get("band_hz", (4.0, 45.0))
        self.input_shape = input_shape
        self.front = RawEEGFeatures(
            electrodes=list(params.get("electrodes", EMOTIV_ELECTRODES)), model_rate=float(params.get("sample_rate", 128)),
            window_s=float(spec.window_s or 1.0), hop_s=settings.get("hop_s"), norm_s=float(params.get("norm_s", 60.0)),
            clip=float(params.get("clip", 6.0)), band=(float(band[0]), float(band[1])), name=card.name,
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


def speech_log_mel(card: ModelCard, input_shape: tuple[int, ...], params: dict[str, Any],
                   settings: Mapping[str, Any]) -> FeatureFn:
    """``speech.log_mel+windows``: 16 kHz log-mel of the window, its last model window, loudness-normalised where
    the card says ``loudness_norm`` (as in training), z-scored."""
    from edge.features import speech

    mean = np.asarray(params["population_mean"], np.float32) if "population_mean" in params else None
    std = np.asarray(params["population_std"], np.float32) if "population_std" in params else None
    loud = bool(params.get("loudness_norm", False))
    import scipy.signal  # noqa: F401  - resampling's import, paid at start-up

    # successive windows overlap: only the frames that changed are computed (the same values as log_mel)
    sliding = speech.SlidingLogMel(round(float(settings.get("hop_s") or 0.0) * speech.SAMPLE_RATE))

    def log_mel(window: np.ndarray, rate: float, channels: list[str] | None) -> np.ndarray:
        audio = speech.to_mono_16k(window, int(rate)) if int(rate) != speech.SAMPLE_RATE else window
        mel = speech.windows(sliding(audio), frames=int(input_shape[-1]))[-1]  # the window ending now
        if mean is not None and std is not None:
            mel = speech.model_input(mel, mean, std, loud)  # what evaluation and training compute
        elif loud:
            mel = speech.normalise_loudness(mel)
        return np.asarray(mel, np.float32).reshape(input_shape)

    return log_mel


def function_recipe(module_name: str, func_name: str) -> RecipeBuilder:
    """A recipe that calls ``edge.features.<module>.<function>(window, **card params)`` on each window."""

    def build(card: ModelCard, input_shape: tuple[int, ...], params: dict[str, Any], settings: Mapping[str, Any]) -> FeatureFn:
        try:
            module = importlib.import_module(f"edge.features.{module_name}")
        except ImportError as exc:
            raise ConfigError(f"model '{card.name}': feature recipe '{card.features.recipe}' cannot be imported: {exc}") from None
        func = getattr(module, func_name, None)
        if func is None:
            raise ConfigError(f"model '{card.name}': unknown feature recipe '{card.features.recipe}' "
                              f"(expected one of {', '.join(sorted(RECIPES))} or a function of edge.features)")

        def call(window: np.ndarray, rate: float, channels: list[str] | None) -> np.ndarray:
            return np.asarray(func(window, **params), dtype=np.float32).reshape(input_shape)

        return call

    return build


@dataclass(frozen=True)
class Recipe:
    """One feature recipe: how the runtime builds a model input from a window, and which ``edge.evaluation``
    module loads a data set into the same inputs offline (for ``emoedge eval``, the quantization gate, the
    calibration sets and ``bench``; None: the card's modality decides, as for ``identity`` toys)."""

    build: RecipeBuilder
    evaluator: str | None = None


#: recipe name (without ``edge.features.``) -> Recipe; other ``speech.*`` names share the log-mel recipe.
RECIPES: dict[str, Recipe] = {
    "identity": Recipe(identity),
    "eeg.band_power": Recipe(eeg_band_power, "edge.evaluation.eeg"),
    "eeg.raw_eeg": Recipe(RawEEGInput, "edge.evaluation.histn"),
    "speech.log_mel+windows": Recipe(speech_log_mel, "edge.evaluation.speech"),
    "face.face_input": Recipe(function_recipe("face", "face_input"), "edge.evaluation.face"),
    "scene.scene_input": Recipe(function_recipe("scene", "scene_input"), "edge.evaluation.scene"),
}


def recipe_of(card: ModelCard) -> Recipe | None:
    """The card's Recipe: by name, ``speech.*`` as the log-mel one, else None (a plain ``module.function``)."""
    name = recipe_name(card)
    return RECIPES.get(name) or (RECIPES["speech.log_mel+windows"] if name.startswith("speech.") else None)


def recipe_name(card: ModelCard) -> str:
    """The card's recipe without the ``edge.features.`` prefix."""
    return card.features.recipe.removeprefix("edge.features.")


def build_features(card: ModelCard, input_shape: tuple[int, ...], settings: Mapping[str, Any] | None = None) -> FeatureFn:
    """The function that turns one window into one model input item (no batch axis), per the card's recipe.

    Called once per source. ``settings`` carries the source's ``window_s`` and ``hop_s``.
    """
    name, params = recipe_name(card), dict(card.features.params)
    recipe = recipe_of(card)
    if recipe is not None:
        return recipe.build(card, input_shape, params, settings or {})
    module_name, _, func_name = name.rpartition(".")
    if not module_name:
        raise ConfigError(f"model '{card.name}': unknown feature recipe '{card.features.recipe}' "
                          f"(expected one of {', '.join(sorted(RECIPES))} or a function of edge.features)")
    return function_recipe(module_name, func_name)(card, input_shape, params, settings or {})


def face_functions(params: Mapping[str, Any] | None = None) -> tuple[DetectFn, FaceInputFn]:
    """Detection and crop-to-input from ``edge.features.face`` (the same code as training), with the card's params."""
    try:
        face = importlib.import_module("edge.features.face")
    except ImportError as exc:
        raise ConfigError(f"a camera source needs the face features (edge.features.face): {exc}") from None
    params = dict(params or {})
    size = int(params.get("size", face.DEFAULT_SIZE))
    margin = float(params.get("margin", face.DEFAULT_MARGIN))

    def detect(small: np.ndarray) -> list[Box]:
        return list(face.detect_faces(small, scale=1.15, min_size=20))

    def face_input(frame: np.ndarray, box: Box) -> np.ndarray:
        return np.asarray(face.face_input(face.crop_face(frame, box, size=size, margin=margin), size), dtype=np.float32)

    return detect, face_input
