"""Per-person profiles: one per person and model, under the device's state folder, owner-only.

A profile holds what adaptation derived from a person (``edge.adapt``): their embedding statistics,
the adapted head of each logits output (or why the population head was kept), the sample counts per
class, the sha256 of the model file it belongs to, and when it was created and updated. Never raw
audio, images or EEG, nor the embeddings of single samples.

Layout: ``STATE/profiles/<model>/<person>.json`` with the folders 0700 and the files 0600, where STATE
is ``EMOEDGE_STATE`` or the user's state folder. A profile made for another model file (another sha256)
is refused with a message that says to enroll again; a corrupt file is named and refused.
"""

from __future__ import annotations

import json
import os
import re
import stat
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from edge.adapt import Adaptation, Head, PersonNorm, adapt_head, population_heads
from edge.errors import EmoEdgeError
from edge.paths import atomic_write

FORMAT = 1
_SAFE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


class ProfileError(EmoEdgeError):
    """A profile is missing, corrupt, unsafe to name, or of another model file."""


def state_dir(arg: str | os.PathLike[str] | None = None) -> Path:
    """Writable device state: the argument, else ``EMOEDGE_STATE``, else the user's state folder."""
    if arg:
        return Path(arg)
    env = os.environ.get("EMOEDGE_STATE")
    if env:
        return Path(env)
    import platformdirs

    return Path(platformdirs.user_state_dir("emoedge"))


def check_person(name: str) -> str:
    """``name`` if it is a safe file name (letters, digits, ``_ . -``, not starting with a dot), else ProfileError."""
    if not isinstance(name, str) or not _SAFE.match(name) or name.endswith("."):
        raise ProfileError(
            f"person name {name!r} is not a safe file name (1-64 letters, digits, '_', '.', '-', "
            "starting with a letter or digit)"
        )
    return name


@dataclass
class HeadProfile:
    """One logits output of a person: the adapted weights, or None where the population head is kept."""

    adapted: bool
    reason: str
    counts: dict[str, int]
    strength: float
    weight: np.ndarray | None = None
    bias: np.ndarray | None = None
    fit_seconds: float = 0.0

    @classmethod
    def of(cls, a: Adaptation) -> HeadProfile:
        return cls(
            a.adapted, a.reason, a.counts, a.strength, a.head.weight if a.adapted else None,
            a.head.bias if a.adapted else None, a.fit_seconds,
        )


@dataclass
class Profile:
    person: str
    model: str
    model_sha256: str
    norm: PersonNorm
    heads: dict[str, HeadProfile]
    created: str
    updated: str
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def adapted(self) -> bool:
        return any(h.adapted for h in self.heads.values())

    def head(self, population: Head) -> Head:
        """The head to use for ``population.output``: this person's adapted head, else the population head."""
        hp = self.heads.get(population.output)
        if hp is None or not hp.adapted or hp.weight is None or hp.bias is None:
            return population
        return Head(population.output, population.labels, hp.weight, hp.bias, "adapted")

    def to_json(self) -> dict[str, Any]:
        return {
            "format": FORMAT, "person": self.person, "model": self.model, "model_sha256": self.model_sha256,
            "created": self.created, "updated": self.updated,
            "normalisation": {"mean": self.norm.mean.tolist(), "std": self.norm.std.tolist(), "n": self.norm.n},
            "heads": {
                name: {
                    "adapted": h.adapted, "reason": h.reason, "counts": h.counts, "strength": h.strength,
                    "fit_seconds": h.fit_seconds,
                    **({"weight": h.weight.tolist(), "bias": h.bias.tolist()} if h.weight is not None and h.bias is not None else {}),
                }
                for name, h in self.heads.items()
            },
            **({"extra": self.extra} if self.extra else {}),
        }

    @classmethod
    def from_json(cls, data: Any, where: str) -> Profile:
        """Validate a profile's JSON; ProfileError naming ``where`` and the first problem."""
        try:
            if not isinstance(data, dict) or data.get("format") != FORMAT:
                raise ValueError(f"not a profile of format {FORMAT}")
            person = check_person(data["person"])
            norm_data = data["normalisation"]
            mean = np.asarray(norm_data["mean"], np.float64)
            std = np.asarray(norm_data["std"], np.float64)
            if mean.ndim != 1 or mean.shape != std.shape or not np.isfinite(mean).all() or not (std > 0).all():
                raise ValueError("normalisation mean/std are not two matching vectors with std > 0")
            heads = {}
            for name, h in data["heads"].items():
                weight = np.asarray(h["weight"], np.float64) if "weight" in h else None
                bias = np.asarray(h["bias"], np.float64) if "bias" in h else None
                if bool(h["adapted"]) and (
                    weight is None or bias is None or weight.ndim != 2 or weight.shape != (len(bias), len(mean))
                    or not np.isfinite(weight).all() or not np.isfinite(bias).all()
                ):
                    raise ValueError(f"head {name}: adapted but no finite weight ({len(mean)} columns) and bias")
                heads[str(name)] = HeadProfile(
                    bool(h["adapted"]), str(h["reason"]), {str(k): int(v) for k, v in h["counts"].items()},
                    float(h["strength"]), weight, bias, float(h.get("fit_seconds", 0.0)),
                )
            return cls(
                person, str(data["model"]), str(data["model_sha256"]), PersonNorm(mean, std, int(norm_data["n"])),
                heads, str(data["created"]), str(data["updated"]), dict(data.get("extra", {})),
            )
        except ProfileError as exc:
            raise ProfileError(f"{where}: {exc}") from None
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            what = f"missing field {exc}" if isinstance(exc, KeyError) else str(exc)
            raise ProfileError(f"{where}: corrupt profile ({what})") from None


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def build_profile(
    model: Any, person: str, enrollment: dict[str, tuple[np.ndarray, np.ndarray]], unlabeled: np.ndarray,
    previous: Profile | None = None,
) -> Profile:
    """Adapt logits outputs of ``model`` to ``person``: ``enrollment`` maps an output to its labelled
    (embeddings, class indices); ``unlabeled`` (all of the person's embeddings) gives the normalisation.

    An enrollment with one class only raises InputError (from ``adapt_head``), naming the output.
    """
    check_person(person)
    heads = population_heads(model)
    norm = PersonNorm.of(unlabeled)
    out: dict[str, HeadProfile] = {}
    for name, (embeddings, y) in enrollment.items():
        if name not in heads:
            raise ProfileError(f"model '{model.name}' has no logits output '{name}' (has {sorted(heads)})")
        out[name] = HeadProfile.of(adapt_head(heads[name], norm, embeddings, y))
    now = _now()
    created = previous.created if previous is not None else now
    return Profile(person, model.name, model.sha256, norm, out, created, now)


def profile_path(person: str, model_name: str, state: str | os.PathLike[str] | None = None) -> Path:
    return state_dir(state) / "profiles" / check_person(model_name) / f"{check_person(person)}.json"


def _private_dir(path: Path) -> None:
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(path, 0o700)


def save_profile(profile: Profile, state: str | os.PathLike[str] | None = None) -> Path:
    """Write a profile atomically, the file 0600 and its folders 0700."""
    path = profile_path(profile.person, profile.model, state)
    _private_dir(path.parent.parent)
    _private_dir(path.parent)
    with atomic_write(path, "w", permissions=0o600) as f:
        json.dump(profile.to_json(), f)
    return path


def read_profile_file(path: str | os.PathLike[str]) -> Profile:
    """A profile from any file (export, import), validated; ProfileError naming the file."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ProfileError(f"{p}: no such profile") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ProfileError(f"{p}: unreadable profile ({exc})") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ProfileError(f"{p}: corrupt profile (not JSON: {exc})") from None
    return Profile.from_json(data, str(p))


def check_model(profile: Profile, model: Any, where: str) -> None:
    """Refuse a profile made for another model file."""
    if profile.model != model.name or profile.model_sha256 != model.sha256:
        raise ProfileError(
            f"{where}: profile of '{profile.person}' belongs to model '{profile.model}' sha256 "
            f"{profile.model_sha256[:12]}, not to '{model.name}' sha256 {model.sha256[:12]} (another model "
            f"version); enroll again: emoedge adapt {model.name} --person {profile.person} --data DIR"
        )


def load_profile(person: str, model: Any, state: str | os.PathLike[str] | None = None) -> Profile:
    """The profile of ``person`` for a loaded model; ProfileError when missing, corrupt or of another model file."""
    path = profile_path(person, model.name, state)
    if not path.is_file():
        raise ProfileError(f"no profile of '{person}' for model '{model.name}' in {path.parent}")
    profile = read_profile_file(path)
    check_model(profile, model, str(path))
    return profile


def list_profiles(state: str | os.PathLike[str] | None = None, model_name: str | None = None) -> list[Path]:
    root = state_dir(state) / "profiles"
    if not root.is_dir():
        return []
    folders = [root / check_person(model_name)] if model_name else sorted(p for p in root.iterdir() if p.is_dir())
    return sorted(f for d in folders if d.is_dir() for f in d.glob("*.json"))


def delete_profile(person: str, model_name: str, state: str | os.PathLike[str] | None = None) -> Path:
    path = profile_path(person, model_name, state)
    if not path.is_file():
        raise ProfileError(f"no profile of '{person}' for model '{model_name}' in {path.parent}")
    path.unlink()
    return path


def import_profile(source: str | os.PathLike[str], model: Any | None, state: str | os.PathLike[str] | None = None) -> Path:
    """Validate an exported profile (and, given the installed model, that it belongs to it), then store it."""
    profile = read_profile_file(source)
    if model is not None:
        check_model(profile, model, str(source))
    return save_profile(profile, state)


def is_private(path: Path) -> bool:
    """True when only the owner may read or write ``path`` (no group or other bits)."""
    return not (stat.S_IMODE(path.stat().st_mode) & 0o077)
