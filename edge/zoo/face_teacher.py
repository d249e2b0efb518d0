"""``emoedge train face-teacher``: the narrow ResNet-18 that the face student is distilled from.

Same data, augmentation and loss as the student (``edge.zoo.face``), no teacher of its own; the result goes
to ``models/face/teacher`` by default, where ``emoedge train face`` finds it. A run takes minutes on a GPU
(``--device cuda``) and hours on two CPU cores: the shipped teacher saves a user that run.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from edge.zoo import face

RECIPE = face.TEACHER_RECIPE  # what --epochs, --lr, --batch-size and --set override


def train(data_dir: str | None, out_dir: Path | None, args: argparse.Namespace) -> Path:
    return face.train(data_dir, out_dir, args, teacher_model=True)
