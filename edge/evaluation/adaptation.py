"""The per-person adaptation protocol of ``emoedge eval NAME --data DIR --adapt K``.

For each person and each class of the head being scored, the person's first K samples of that class in
file-name order (EEG: video order) are the labelled enrollment; all of that person's other samples are
scored. The adapter may use all of that person's inputs without labels (their embedding statistics).
Persons: speech, the ``actor``/``speaker`` column (RAVDESS names otherwise); EEG, the subject column of
subject_video.txt; faces, the part of the file name before the first ``_``.

The result has the usual metric keys on the scored samples (adapted heads), ``adapt`` (k, persons,
enrolled, scored, how many persons were adapted and why not) and ``unadapted`` (the same keys for the
population model on the same scored samples), so the gain is read from one run.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np

from edge.adapt import Head, PersonNorm, adapt_head, population_heads
from edge.errors import ConfigError, InputError
from edge.evaluation import LabelledSet
from edge.evaluation.metrics import classification_metrics

# the head output of each label key of a LabelledSet (EEG) or of the single label array
_EEG_HEADS = {"valence": "valence_logits", "arousal": "arousal_logits"}
_FER_SPLITS = {"Training", "PublicTest", "PrivateTest"}


def _outputs(runner: Any, data: LabelledSet, names: list[str], batch: int = 64) -> dict[str, np.ndarray]:
    key = next(iter(data.inputs))
    x = data.inputs[key]
    parts: dict[str, list[np.ndarray]] = {n: [] for n in names}
    for s in range(0, len(x), batch):
        out = runner.infer({key: x[s : s + batch]})
        for n in names:
            parts[n].append(np.asarray(out[n], np.float64))
    return {n: np.concatenate(v) for n, v in parts.items()}


def samples(
    runner: Any, card: Any, data: LabelledSet, default_person: str | None = None
) -> tuple[np.ndarray, dict[str, np.ndarray], dict[str, np.ndarray], list[str], list[Any]]:
    """Per sample: embedding, population logits per head, labels per head, person and order key.

    ``default_person`` names the person of a folder without person ids (one person's own recordings).
    """
    heads = [o.name for o in card.outputs if o.name == "logits" or o.name.endswith("_logits")]
    out = _outputs(runner, data, ["embedding", *heads])
    extra = data.extra
    if isinstance(data.labels, dict):  # EEG: one label array per head
        labels = {_EEG_HEADS[k]: v for k, v in data.labels.items()}
        persons = [str(int(s)) for s in extra["subjects"]]
        order: list[Any] = [int(v) for v in extra["videos"]]
        return out["embedding"], {h: out[h] for h in heads}, labels, persons, order
    labels = {"logits": data.labels}
    if "owner" in extra:  # speech: a clip is the mean of its windows' embeddings (its logits their sum)
        owner = extra["owner"]
        clips = int(extra["clips"])
        counts = np.bincount(owner, minlength=clips)[:, None]
        emb = np.zeros((clips, out["embedding"].shape[1]))
        np.add.at(emb, owner, out["embedding"])
        logits = np.zeros((clips, out["logits"].shape[1]))
        np.add.at(logits, owner, out["logits"])
        persons = extra.get("persons")
        if persons is not None and default_person is not None:
            persons = [default_person if p is None else p for p in persons]
        if persons is None or any(p is None for p in persons):
            raise ConfigError("eval --adapt: the speech folder has no speaker ids (labels.csv needs an actor or speaker column)")
        return emb / counts, {"logits": logits}, labels, [str(p) for p in persons], list(extra["files"])
    files = extra.get("files")
    if not files:
        raise ConfigError(f"eval --adapt: no person ids for model '{card.name}'")
    names = [Path(f).name for f in files]
    persons = [n.split("_", 1)[0] if "_" in n else (default_person or "") for n in names]
    if not all(persons) or set(persons) <= _FER_SPLITS:
        raise ConfigError(
            "eval --adapt: the image file names carry no person ids (expected PERSON_rest.ext; FER2013 names "
            "start with its split name, Training/PublicTest/PrivateTest, not a person)"
        )
    return out["embedding"], {"logits": out["logits"]}, labels, persons, names


def split_enrollment(persons: list[str], order: list[Any], labels: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices of the enrollment (each person's first K of each class in ``order``) and of the scored rest."""
    enroll, scored = [], []
    for person in sorted(set(persons)):
        idx = sorted((i for i, p in enumerate(persons) if p == person), key=lambda i: (order[i], i))
        taken: dict[int, int] = {}
        for i in idx:
            c = int(labels[i])
            if taken.get(c, 0) < k:
                taken[c] = taken.get(c, 0) + 1
                enroll.append(i)
            else:
                scored.append(i)
    return np.array(enroll, dtype=np.int64), np.array(scored, dtype=np.int64)


def evaluate_adapted(runner: Any, model: Any, data: LabelledSet, k: int) -> dict[str, Any]:
    """The adaptation protocol on one labelled set: adapted and population metrics on the same scored samples."""
    if k < 1:
        raise ConfigError(f"eval --adapt: K must be at least 1 (got {k})")
    card = model.card
    heads = population_heads(model)
    emb, pop_logits, labels, persons, order = samples(runner, card, data)
    people = sorted(set(persons), key=lambda s: (len(s), s))
    result: dict[str, Any] = {}
    unadapted: dict[str, Any] = {}
    info: dict[str, Any] = {"k": k, "persons": people, "enrolled": {}, "scored": {}, "adapted_persons": {},
                            "not_adapted": {}, "fit_seconds": {}}
    for head_name, y in labels.items():
        head: Head = heads[head_name]
        enroll, scored = split_enrollment(persons, order, y, k)
        person_arr = np.array(persons)
        pred = np.empty(len(y), dtype=np.int64)
        fit_times, reasons = [], {}
        for person in people:
            mine = np.flatnonzero(person_arr == person)
            norm = PersonNorm.of(emb[mine])  # all the person's inputs, no labels
            e_idx = enroll[person_arr[enroll] == person]
            s_idx = scored[person_arr[scored] == person]
            started = time.perf_counter()
            try:
                adaptation = adapt_head(head, norm, emb[e_idx], y[e_idx])
                used, why = adaptation.head, None if adaptation.adapted else adaptation.reason
            except InputError as exc:
                used, why = head, str(exc)
            fit_times.append(time.perf_counter() - started)
            if why:
                reasons[person] = why
            pred[s_idx] = used.logits(emb[s_idx]).argmax(1)
        key = head_name if len(labels) > 1 else None
        metrics = classification_metrics(y[scored], pred[scored], head.labels)
        base = classification_metrics(y[scored], pop_logits[head_name][scored].argmax(1), head.labels)
        label_key = {v: k2 for k2, v in _EEG_HEADS.items()}.get(head_name, head_name)
        if key is None:
            result.update(metrics)
            unadapted.update(base)
            tag = "logits"
        else:
            result[label_key] = metrics
            unadapted[label_key] = base
            tag = label_key
        info["enrolled"][tag] = int(len(enroll))
        info["scored"][tag] = int(len(scored))
        info["adapted_persons"][tag] = len(people) - len(reasons)
        info["not_adapted"][tag] = reasons
        info["fit_seconds"][tag] = {"mean": float(np.mean(fit_times)), "max": float(np.max(fit_times))}
    if len(labels) == 1:  # a single head: plain numbers, as the keys read
        for field in ("enrolled", "scored", "adapted_persons", "not_adapted", "fit_seconds"):
            info[field] = info[field]["logits"]
    result["adapt"] = info
    result["unadapted"] = unadapted
    result["skipped"] = data.skipped
    result["mode"] = data.extra.get("mode")
    return result


def print_report(result: dict[str, Any]) -> None:
    """Population against adapted, per head, on the same scored samples."""
    info = result["adapt"]
    print(f"{result.get('model', '?')} on {result.get('data', '?')}: adaptation K = {info['k']}, "
          f"persons {', '.join(info['persons'])}")
    heads = [h for h in ("valence", "arousal") if h in result] or [None]
    for h in heads:
        adapted = result[h] if h else result
        base = result["unadapted"][h] if h else result["unadapted"]
        get = (lambda d, h=h: d[h]) if h else (lambda d: d)
        print(f"  {h or 'emotion'}: accuracy {base['accuracy']:.3f} -> {adapted['accuracy']:.3f}, balanced accuracy "
              f"{base['balanced_accuracy']:.3f} -> {adapted['balanced_accuracy']:.3f} (population -> adapted; "
              f"enrolled {get(info['enrolled'])}, scored {get(info['scored'])}, persons adapted "
              f"{get(info['adapted_persons'])}/{len(info['persons'])}, fit {get(info['fit_seconds'])['max'] * 1e3:.0f} ms max)")
        for person, why in get(info["not_adapted"]).items():
            print(f"    {person}: {why}")
