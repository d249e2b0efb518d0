"""Live enrollment: choose the active person, label the next seconds of a source, fit, forget.

The pipeline hands every inference of a source to ``Enroller.process``: the window's embedding joins
the active person's unlabeled history (memory only, for their normalisation), and while a ``label``
command runs on that source it is kept with that label (memory only, until ``fit``). When the active
person has an adapted profile for the source's model, the logits (and ``va``) are recomputed from the
person's head, and the estimate names the profile and whether it was adapted. Only ``fit`` writes
anything: the profile (statistics and head weights, ``edge.profiles``), never a sample.

Commands arrive as JSON (``<root>/<device>/enroll/set`` over MQTT, or ``Enroller.command``)::

    {"action": "select", "person": "alice", "source": "mic"}   # source optional: the device default
    {"action": "label", "label": "happy", "seconds": 6, "source": "mic"}   # person: the active one
    {"action": "fit", "source": "mic"}
    {"action": "forget", "person": "alice"}

Each gets a reply ``{"action", "ok", "message", ...}``; a bad command gets ``ok: false`` and a message
that names the problem, and the device keeps estimating with the heads it had.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from edge.adapt import EMBEDDING, Head, logits_outputs, population_heads
from edge.errors import EmoEdgeError
from edge.profiles import (
    Profile,
    ProfileError,
    build_profile,
    check_person,
    delete_profile,
    load_profile,
    profile_path,
    save_profile,
)
from edge.publish.control import PayloadRejected, parse_json_bounded

log = logging.getLogger(__name__)
MAX_ENROLL_BYTES = 2048  # a command is a few short fields
MAX_ENROLL_DEPTH = 2
HISTORY = 5000  # unlabeled embeddings kept per person and source, in memory, for the normalisation


class EnrollError(EmoEdgeError):
    """A command that cannot be carried out; its message is the reply."""


@dataclass
class Capture:
    person: str
    labels: dict[str, int]  # logits output -> class index
    text: str
    start: float
    until: float


@dataclass
class _Memory:
    history: collections.deque[np.ndarray] = field(default_factory=lambda: collections.deque(maxlen=HISTORY))
    labelled: list[tuple[np.ndarray, dict[str, int]]] = field(default_factory=list)


class Enroller:
    """Per-source active persons, label captures and fitted profiles (thread-safe)."""

    def __init__(self, models: Mapping[str, Any], state: str | None = None, clock: Callable[[], float] = time.time) -> None:
        # only sources whose model has an embedding and logits can adapt
        self.models = {s: m for s, m in models.items()
                       if EMBEDDING in {o.name for o in m.card.outputs} and logits_outputs(m.card)}
        self.state = state
        self.clock = clock
        self.active: dict[str | None, str] = {}  # source (None: every source) -> person
        self._captures: dict[str, Capture] = {}
        self._memory: dict[tuple[str, str], _Memory] = collections.defaultdict(_Memory)
        self._profiles: dict[tuple[str, str], Profile | None] = {}
        self._lock = threading.Lock()

    # --- commands ---------------------------------------------------------------------------
    def command(self, payload: bytes | str | Mapping[str, Any]) -> dict[str, Any]:
        """Carry out one command; the reply says whether it worked and why not (and echoes its ``id``)."""
        data: Any = None
        try:  # bounded: size and depth are checked before json.loads sees an untrusted payload
            raw = payload.encode() if isinstance(payload, str) else payload
            data = parse_json_bounded(raw, MAX_ENROLL_BYTES, MAX_ENROLL_DEPTH) if isinstance(raw, bytes | bytearray) else dict(raw)
        except PayloadRejected as exc:
            return {"action": None, "ok": False, "message": f"a command is a small JSON object; this is not one ({exc})"}
        if not isinstance(data, dict):
            return {"action": None, "ok": False, "message": "a command is a JSON object with an 'action'"}
        action = data.get("action")
        handler = {"select": self._select, "label": self._label, "fit": self._fit, "forget": self._forget}.get(str(action))
        try:
            if handler is None:
                raise EnrollError(f"unknown action {action!r} (expected select, label, fit or forget)")
            with self._lock:
                reply = handler(data)
            reply.update(action=action, ok=True)
        except EmoEdgeError as exc:
            reply = {"action": action, "ok": False, "message": str(exc)}
        if "id" in data:
            reply["id"] = data["id"]
        return reply

    def _source(self, data: Mapping[str, Any], required: bool) -> str | None:
        source = data.get("source")
        if source is None:
            if required:
                if len(self.models) == 1:
                    return next(iter(self.models))
                raise EnrollError(f"name a 'source' (sources that can adapt: {', '.join(self.models) or 'none'})")
            return None
        if source not in self.models:
            raise EnrollError(f"no source '{source}' that can adapt (sources that can: {', '.join(self.models) or 'none'})")
        return str(source)

    def _person(self, data: Mapping[str, Any], source: str | None) -> str:
        person = data.get("person")
        if person is None:
            person = self.active.get(source) or self.active.get(None)
            if person is None:
                raise EnrollError(f"no person is active for source '{source}' (send select first)")
        return check_person(str(person))

    def _select(self, data: Mapping[str, Any]) -> dict[str, Any]:
        source = self._source(data, required=False)
        person = data.get("person")
        if person is None:
            self.active.pop(source, None)
            return {"person": None, "source": source, "message": "no active person: population heads"}
        self.active[source] = check_person(str(person))
        return {"person": person, "source": source, "message": f"'{person}' is active on {source or 'every source'}"}

    def _label(self, data: Mapping[str, Any]) -> dict[str, Any]:
        source = self._source(data, required=True)
        assert source is not None
        person = self._person(data, source)
        model = self.models[source]
        text = str(data.get("label", "")).strip()
        labels = self._parse_label(model, text)
        seconds = data.get("seconds")
        window = model.card.inputs[0].window_s or 0.0
        if not isinstance(seconds, (int, float)) or isinstance(seconds, bool) or seconds <= 0:
            raise EnrollError("'seconds' must be a positive number")
        if seconds < window:
            raise EnrollError(f"{seconds} s is too few: the {model.name} model reads {window:g}-s windows")
        now = self.clock()
        self._captures[source] = Capture(person, labels, text, now, now + float(seconds))
        return {"person": person, "source": source, "label": text, "seconds": seconds,
                "message": f"labelling the next {seconds} s of {source} as '{text}' for '{person}'"}

    @staticmethod
    def _parse_label(model: Any, text: str) -> dict[str, int]:
        heads = population_heads(model)
        single = len(heads) == 1
        out: dict[str, int] = {}
        for token in text.split():
            head, _, value = token.rpartition(":")
            name = next(iter(heads)) if single and not head else f"{head}_logits"
            if name not in heads or value not in heads[name].labels:
                known = [f"{n.removesuffix('_logits')}:{v}" if not single else v for n, h in heads.items() for v in h.labels]
                raise EnrollError(f"label '{token}' is not one of the {model.name} model's ({', '.join(known)})")
            out[name] = heads[name].labels.index(value)
        if not out:
            raise EnrollError("a 'label' is needed")
        return out

    def _fit(self, data: Mapping[str, Any]) -> dict[str, Any]:
        source = self._source(data, required=True)
        assert source is not None
        person = self._person(data, source)
        model = self.models[source]
        memory = self._memory[(person, source)]
        if not memory.labelled:
            raise EnrollError(f"no labelled windows of '{person}' on {source} (send label first, and wait its seconds)")
        unlabeled = np.stack(list(memory.history))
        enrollment = {}
        for head in population_heads(model):
            rows = [(e, lab[head]) for e, lab in memory.labelled if head in lab]
            if rows:
                enrollment[head] = (np.stack([e for e, _ in rows]), np.array([c for _, c in rows], dtype=np.int64))
        path = profile_path(person, model.name, self.state)
        previous = self._profiles.get((person, model.name)) if path.is_file() else None
        profile = build_profile(model, person, enrollment, unlabeled, previous)
        save_profile(profile, self.state)
        self._profiles[(person, model.name)] = profile
        memory.labelled.clear()  # the examples are spent: only the profile stays
        heads = {k: {"adapted": h.adapted, "reason": h.reason, "counts": h.counts} for k, h in profile.heads.items()}
        return {"person": person, "source": source, "adapted": profile.adapted, "heads": heads,
                "message": f"profile of '{person}' for {model.name} written ({'adapted' if profile.adapted else 'population heads kept'})"}

    def _forget(self, data: Mapping[str, Any]) -> dict[str, Any]:
        person = check_person(str(data.get("person") or ""))
        deleted = []
        for model in {m.name: m for m in self.models.values()}.values():
            try:
                deleted.append(str(delete_profile(person, model.name, self.state)))
            except ProfileError:
                pass
            self._profiles.pop((person, model.name), None)
        for key in [k for k in self._memory if k[0] == person]:
            del self._memory[key]
        for src in [s for s, c in self._captures.items() if c.person == person]:
            del self._captures[src]
        for src in [s for s, p in self.active.items() if p == person]:
            del self.active[src]
        return {"person": person, "deleted": deleted,
                "message": f"forgot '{person}': {len(deleted)} profile(s) deleted" if deleted else
                           f"forgot '{person}' (no profile was stored)"}

    # --- the pipeline's hook ----------------------------------------------------------------
    def _profile(self, person: str, model: Any) -> Profile | None:
        key = (person, model.name)
        if key not in self._profiles:
            try:
                self._profiles[key] = load_profile(person, model, self.state)
            except ProfileError as exc:
                if profile_path(person, model.name, self.state).is_file():
                    log.warning("%s; using the population heads", exc)
                self._profiles[key] = None
        return self._profiles[key]

    def process(self, source: str, outputs: dict[str, np.ndarray], ts: Sequence[float]) -> tuple[dict[str, np.ndarray], str | None, bool]:
        """Record a batch's embeddings for the active person and apply their head: (outputs, profile, adapted)."""
        model = self.models.get(source)
        if model is None:
            return outputs, None, False
        with self._lock:
            person = self.active.get(source) or self.active.get(None)
            if person is None or EMBEDDING not in outputs:
                return outputs, None, False
            emb = np.asarray(outputs[EMBEDDING], np.float64)
            memory = self._memory[(person, source)]
            capture = self._captures.get(source)
            for i, t in enumerate(ts):
                memory.history.append(emb[i])
                if capture is not None and capture.person == person and capture.start <= t <= capture.until:
                    memory.labelled.append((emb[i], dict(capture.labels)))
            if capture is not None and ts and max(ts) > capture.until:
                del self._captures[source]
            profile = self._profile(person, model)
        if profile is None or not profile.adapted:
            return outputs, person, False
        out = dict(outputs)
        for name, population in population_heads(model).items():
            head: Head = profile.head(population)
            if head is not population:
                out[name] = head.logits(emb).astype(np.float32)
        if "va" in out and "valence_logits" in out and "arousal_logits" in out:
            # va = p(positive) - p(negative), p(high) - p(low) = tanh of half the logit difference
            out["va"] = np.stack([np.tanh((out[k][:, 1] - out[k][:, 0]) / 2) for k in ("valence_logits", "arousal_logits")],
                                 axis=1).astype(np.float32)
        return out, person, True
