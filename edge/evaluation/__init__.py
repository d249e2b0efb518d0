"""Evaluation of a model on a labelled data set, through a real runner (any backend, any precision).

One module per modality implements two functions, registered in ``EVALUATORS``:

    load_split(card, data_dir, split, limit=None, seed=0, mode=None) -> LabelledSet
        model-ready inputs (the same feature code the runtime uses) and integer labels, for
        split "train" (calibration sets) or "validation" (metrics, the quantization gate);
    evaluate(runner, card, data) -> dict
        runs the model in batches and returns ``classification_metrics`` (for EEG: one such dict
        under "valence" and one under "arousal"), plus "skipped";
    print_report(result) (optional)
        the human-readable table of ``emoedge eval``.

Samples whose label the model does not have are skipped and counted, never guessed.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edge.card import ModelCard

# modality (or model name, checked first) -> module with load_split and evaluate
EVALUATORS: dict[str, str] = {
    "face": "edge.evaluation.face",
    "speech": "edge.evaluation.speech",
    "eeg": "edge.evaluation.eeg",
    "histn": "edge.evaluation.histn",  # raw EEG on DASPS-style folders (by model name, before modality eeg)
}


@dataclass
class LabelledSet:
    """Model-ready inputs and labels of one split."""

    inputs: dict[str, np.ndarray]
    labels: np.ndarray | dict[str, np.ndarray]  # class indices; EEG: {"valence": ..., "arousal": ...}
    skipped: int = 0
    description: str = ""  # data set, folder and split, for the card
    extra: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return int(next(iter(self.inputs.values())).shape[0])


def evaluator_for(card: ModelCard) -> Any:
    from edge.errors import ModelError

    module = EVALUATORS.get(card.name) or EVALUATORS.get(card.modality)
    if module is None:
        raise ModelError(f"no evaluator for model '{card.name}' (modality {card.modality})")
    return importlib.import_module(module)


def load_split(
    card: ModelCard, data_dir: Path, split: str, limit: int | None = None, seed: int = 0, mode: str | None = None
) -> LabelledSet:
    return evaluator_for(card).load_split(card, Path(data_dir), split, limit=limit, seed=seed, mode=mode)
