#!/usr/bin/env python3
"""What a face model's OOD gate costs real faces: the share of faces it would call ``unknown``.

    python tools/face_gate_check.py face face_fast                 # the cards as they are
    python tools/face_gate_check.py face --against 2086f90         # and the card of that git revision beside it

Three sets of real faces the gate should keep, none of them used to fit it:

* FER2013 validation faces shrunk to 12-27 px and scaled back (seed 7): far away or out of focus;
* the face detector's hits in OASIS's Person photographs, cropped as the runtime crops (mostly faces, many
  small and blurred, a few not faces at all);
* the faces in the frames ``emoedge bench e2e`` makes (FER2013 faces pasted on a grey frame), as detected.

The held-out FER2013 validation faces themselves set the threshold, so 5% of them are unknown by construction.
Why a tool: a gate tuned to catch non-faces can learn "sharp" as much as "face"; this is the number that says.
Data from ``--data`` or ``EMOEDGE_DATA`` (default ../shared/data).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

from edge.backends import open_runner
from edge.bench.e2e import video_frames
from edge.card import ModelCard, load_card, load_model
from edge.confidence import ood_score
from edge.evaluation import LabelledSet, infer_outputs
from edge.evaluation import face as face_eval
from edge.evaluation.outliers import camera_frame, oasis_photos
from edge.features.face import crop_face, detect_faces, normalise
from edge.paths import PROJECT_ROOT, data_dir


def oasis_person_faces(oasis: Path) -> np.ndarray:
    """The detector's hits in OASIS's Person photographs, each scaled to a camera frame's size first."""
    hits = []
    for path in oasis_photos(oasis, ("Person",)):
        frame = camera_frame(path)
        hits += [crop_face(frame, box) for box in detect_faces(frame)]
    return normalise(np.stack(hits))[:, None]


def e2e_faces() -> np.ndarray:
    """The faces in every third frame that ``emoedge bench e2e`` makes, detected and cropped."""
    frames, _ = video_frames(90)
    crops = [crop_face(f[:, :, 0], box) for f in frames[::3] for box in detect_faces(f[:, :, 0])]
    return normalise(np.stack(crops))[:, None]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("models", nargs="+", help="face model names or folders")
    parser.add_argument("--against", metavar="REV", help="also score with the card of this git revision")
    parser.add_argument("--data", help="data folder (fer2013, oasis_256)")
    args = parser.parse_args(argv)
    root = data_dir(args.data)
    for needed in ("fer2013", "oasis_256"):
        if not (root / needed).is_dir():
            sys.exit(f"{root / needed}: not here (give --data or set EMOEDGE_DATA)")
    sets = {"FER2013 validation, degraded": None, "OASIS Person detector hits": oasis_person_faces(root / "oasis_256"),
            "bench e2e frames": e2e_faces()}
    for name in args.models:
        model = load_model(name)
        validation = face_eval.load_split(model.card, root / "fer2013", "validation")
        sets["FER2013 validation, degraded"] = face_eval.degraded(model.card, validation, seed=7).inputs[model.card.inputs[0].name]
        cards: dict[str, ModelCard] = {"now": model.card}
        if args.against:
            card_file = (model.folder / "card.toml").resolve().relative_to(PROJECT_ROOT)
            text = subprocess.run(["git", "show", f"{args.against}:{card_file}"], cwd=PROJECT_ROOT, check=True,
                                  capture_output=True, text=True).stdout
            with tempfile.TemporaryDirectory() as tmp:
                (Path(tmp) / "card.toml").write_text(text, encoding="utf-8")
                cards = {args.against: load_card(Path(tmp) / "card.toml"), **cards}
        with open_runner(model, threads=1) as runner:
            embeddings = {what: infer_outputs(runner, model.card, LabelledSet(inputs={model.card.inputs[0].name: x},
                                                                              labels=np.zeros(len(x), np.int64)))["embedding"]
                          for what, x in sets.items() if x is not None}
        for what, e in embeddings.items():
            shares = []
            for tag, card in cards.items():
                if card.ood is None:
                    shares.append(f"{tag}: no [ood]")
                    continue
                shares.append(f"{tag}: {(ood_score(e, card.ood.stats(), card.ood.threshold) > 1).mean():.3f}")
            print(f"{model.name}: {what} ({len(e)}) unknown  " + "  ".join(shares))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
