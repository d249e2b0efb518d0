"""Model architectures, data set loaders, training and distillation (needs the ``train`` extra: torch).

Never imported by the runtime. One module per model, registered in ``RECIPES``; each has

    train(data_dir, out_dir, args) -> Path      trains, exports model.onnx + card.toml into out_dir

``args`` carries the train verb's common options (epochs, lr, batch size, teacher, seed, mode,
target, max steps); a recipe reads those it uses and keeps its own defaults for the rest.
"""

from __future__ import annotations

RECIPES: dict[str, str] = {
    "face": "edge.zoo.face",
    "face-teacher": "edge.zoo.face_teacher",
    "speech": "edge.zoo.speech",
    "eeg": "edge.zoo.eeg",
    "histn": "edge.zoo.histn",
    "scene": "edge.zoo.scene",
}
