"""``emoedge adapt NAME --person P --data DIR``: a person's profile from a labelled folder, offline.

The folder is in the layout ``emoedge eval`` reads (speech: wav files and labels.csv; EEG: DEAP-style
band-power text files); where it holds several persons, only P's samples are used (all of P's inputs
give the normalisation, the labelled ones - or the first K per class with ``--k`` - the enrollment).
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

from edge.verbs import add_verb


def register(sub: Any) -> None:
    parser = add_verb(
        sub, "adapt", "adapt a model to one person from their labelled examples and store their profile",
        "  emoedge adapt speech --person 5 --data ../shared/data/ravdess_speech_16k --k 2\n"
        "  emoedge adapt eeg --person 3 --data ../shared/data/eeg_deap_bandpower --k 4",
    )
    parser.add_argument("name", help="model name or folder")
    parser.add_argument("--person", required=True, help="the person (a safe file name); in DIR, their person id")
    parser.add_argument("--data", required=True, help="labelled folder in the layout emoedge eval reads")
    parser.add_argument("--k", type=int, help="enroll only the first K samples per class (file-name / video order)")
    parser.add_argument("--mode", help="input normalisation mode of the evaluator (e.g. speaker-norm)")
    parser.add_argument("--state", help="state folder (default: EMOEDGE_STATE or the user's state folder)")
    parser.add_argument("--models", help="models folder")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import numpy as np

    from edge.adapt import population_heads
    from edge.backends import open_runner
    from edge.card import load_model
    from edge.evaluation import evaluator_for
    from edge.evaluation.adaptation import samples, split_enrollment
    from edge.profiles import (
        ProfileError,
        build_profile,
        check_person,
        profile_path,
        read_profile_file,
        save_profile,
    )

    person = check_person(args.person)
    model = load_model(args.name, models=args.models)
    module = evaluator_for(model.card)
    data = module.load_split(model.card, args.data, "all", mode=args.mode)
    with open_runner(model, backend="onnxruntime", threads=1) as runner:
        emb, _, labels, persons, order = samples(runner, model.card, data, default_person=person)
    mine = np.array([p == person for p in persons])
    if not mine.any():
        shown = sorted(set(persons), key=lambda s: (len(s), s))
        raise ProfileError(f"{args.data}: no samples of person '{person}' (persons there: {', '.join(shown[:20])})")
    idx = np.flatnonzero(mine)
    enrolled: dict[str, Any] = {}
    for head, y in labels.items():
        if args.k is not None:
            enroll, _ = split_enrollment([person] * len(idx), [order[i] for i in idx], y[idx], args.k)
            enrolled[head] = idx[enroll]
        else:
            enrolled[head] = idx
    path = profile_path(person, model.name, args.state)
    previous = read_profile_file(path) if path.is_file() else None
    population_heads(model)  # read once from the graph (cached); the fit below is what a device repeats
    started = time.perf_counter()
    enrollment = {head: (emb[rows], labels[head][rows]) for head, rows in enrolled.items()}
    profile = build_profile(model, person, enrollment, unlabeled=emb[idx], previous=previous)
    seconds = time.perf_counter() - started
    written = save_profile(profile, args.state)
    for head, h in profile.heads.items():
        counts = ", ".join(f"{k} {v}" for k, v in h.counts.items() if v)
        print(f"{head}: {'adapted' if h.adapted else 'population head kept'} ({counts}); {h.reason}")
    print(f"profile of '{person}' for {model.name} (sha256 {model.sha256[:12]}) written to {written} "
          f"(fit {seconds * 1e3:.0f} ms)", file=sys.stderr)
    return 0
