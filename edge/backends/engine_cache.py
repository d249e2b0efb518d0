"""Names and manifests of cached TensorRT engines (in the style of jetson-inference's engine cache).

An engine belongs to one graph file of a model (``model.onnx``; the scene model's ``encoder.onnx`` and
``decoder.onnx``), one TensorRT version, one GPU, one precision and one profile (batch, and for a
decoder the key/value cache length), so the file name says all of these, and a JSON manifest beside the
plain engine file records them with the graph file's sha256. The runtime uses this module to find an
engine without importing TensorRT's builder; ``edge.export.build`` writes them.

Cache layout (``EMOEDGE_CACHE/engines/``)::

    <stem>.engine  <stem>.json     a usable engine and its manifest (status "ok")
    <stem>.lock                    held while a process builds that engine (filelock)
    rejected/<stem>.engine|.json   engines that failed the accuracy gate after their build, kept for inspection
    timing-<trt>-<gpu>.cache       TensorRT's timing cache, shared by every build for that TensorRT and GPU
"""

from __future__ import annotations

import json
import logging
import os
import re
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from edge.paths import cache_dir

log = logging.getLogger(__name__)
REJECTED = "rejected"

MANIFEST_VERSION = 1


def slug(text: str) -> str:
    return re.sub(r"[^a-z0-9.]+", "-", text.lower()).strip("-") or "unknown"


@dataclass(frozen=True)
class EngineKey:
    """Everything an engine was built for."""

    model: str
    model_sha256: str
    trt_version: str
    gpu: str
    precision: str
    min_batch: int = 1
    opt_batch: int = 1
    max_batch: int = 1
    dla_core: int | None = None
    graph: str = "model"  # the graph's file stem; ``model_sha256`` is that graph file's sha256
    max_tokens: int | None = None  # a decoder's profile: the length cap it was built for (edge.export.scene_engine)

    @property
    def stem(self) -> str:
        dla = f"-dla{self.dla_core}" if self.dla_core is not None else ""
        graph = f"-{slug(self.graph)}" if self.graph != "model" else ""
        cap = f"-t{self.max_tokens}" if self.max_tokens is not None else ""
        return (
            f"{slug(self.model)}{graph}-{self.model_sha256[:16]}-trt{slug(self.trt_version)}-{slug(self.gpu)}"
            f"-{self.precision}-b{self.min_batch}-{self.opt_batch}-{self.max_batch}{cap}{dla}"
        )

    @property
    def engine_name(self) -> str:
        return self.stem + ".engine"

    @property
    def manifest_name(self) -> str:
        return self.stem + ".json"

    @property
    def lock_name(self) -> str:
        return self.stem + ".lock"

    def same_slot(self, other: EngineKey) -> bool:
        """Built for the same model name, graph, precision, profile and DLA core (what a rebuild would replace)."""
        return self._slot() == other._slot()

    def _slot(self) -> tuple[object, ...]:
        return (self.model, self.graph, self.precision, self.min_batch, self.opt_batch, self.max_batch,
                self.max_tokens, self.dla_core)


def staleness_reasons(cached: EngineKey, wanted: EngineKey) -> list[str]:
    """Why an engine built for ``cached`` cannot serve ``wanted`` (empty when it can)."""
    reasons = []
    if cached.model_sha256 != wanted.model_sha256:
        reasons.append(f"{cached.graph} file changed (sha256 {cached.model_sha256[:12]} -> {wanted.model_sha256[:12]})")
    if cached.trt_version != wanted.trt_version:
        reasons.append(f"TensorRT version changed ({cached.trt_version} -> {wanted.trt_version})")
    if cached.gpu != wanted.gpu:
        reasons.append(f"GPU changed ({cached.gpu} -> {wanted.gpu})")
    return reasons


@dataclass
class EngineManifest:
    key: EngineKey
    onnx_file: str
    created_at: str
    build_seconds: float | None = None
    status: str = "ok"  # "ok", or "rejected" when it failed the accuracy gate
    gate: dict[str, Any] = field(default_factory=dict)
    version: int = MANIFEST_VERSION
    engine_sha256: str | None = None  # guards against a truncated or overwritten engine file
    builder: dict[str, Any] = field(default_factory=dict)  # how it was built: typing, flags, workspace
    rebuilt_because: list[str] = field(default_factory=list)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> EngineManifest:
        data = json.loads(text)
        known = {f.name for f in fields(cls)}
        data = {k: v for k, v in data.items() if k in known}  # a newer emoedge may have added fields
        data["key"] = EngineKey(**data["key"])
        return cls(**data)

    def write(self, path: Path) -> None:
        """Write atomically (a reader never sees half a manifest)."""
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        tmp.write_text(self.to_json() + "\n", encoding="utf-8")
        tmp.replace(path)


def engine_cache_dir(arg: str | os.PathLike[str] | None = None) -> Path:
    return cache_dir(arg) / "engines"


def sha256_file(path: Path) -> str:
    from edge.card import sha256_file as digest

    return digest(path)


def engine_problem(manifest_path: Path, manifest: EngineManifest) -> str | None:
    """Why the engine beside this manifest cannot be used as it is (None when it can)."""
    engine = manifest_path.with_suffix(".engine")
    if manifest.status != "ok":
        return f"its manifest says status '{manifest.status}'"
    if not engine.is_file():
        return f"the engine file {engine.name} is missing"
    if manifest.engine_sha256 is not None and sha256_file(engine) != manifest.engine_sha256:
        return f"the engine file {engine.name} is corrupt (sha256 does not match its manifest)"
    return None


def engine_lock(cache: Path, key: EngineKey, timeout: float = -1) -> Any:
    """A lock file per engine, so that two processes never build the same engine at once."""
    from filelock import FileLock

    cache.mkdir(parents=True, exist_ok=True)
    return FileLock(str(cache / key.lock_name), timeout=timeout)


def rejected_dir(cache: Path) -> Path:
    return cache / REJECTED


def read_manifests(cache: Path) -> list[tuple[Path, EngineManifest]]:
    """Every readable manifest in the cache, with its path; unreadable ones are skipped."""
    out = []
    if not cache.is_dir():
        return out
    for path in sorted(cache.glob("*.json")):
        try:
            out.append((path, EngineManifest.from_json(path.read_text())))
        except (OSError, ValueError, TypeError, KeyError):
            continue
    return out


def usable_engines(
    cache: Path, model: str, model_sha256: str, trt_version: str, gpu: str, precision: str, graph: str = "model"
) -> list[tuple[Path, EngineManifest]]:
    """The usable engines (path and manifest) of this graph file, TensorRT and GPU, whatever their profile.

    Engines that failed their accuracy gate, whose file is gone or does not match its recorded sha256,
    are never returned (the last with a warning saying why).
    """
    found = []
    for manifest_path, manifest in read_manifests(cache):
        k = manifest.key
        if (k.model, k.graph, k.model_sha256, k.trt_version, k.gpu, k.precision) != (
            model, graph, model_sha256, trt_version, gpu, precision
        ):
            continue
        problem = engine_problem(manifest_path, manifest)
        if problem is None:
            found.append((manifest_path.with_suffix(".engine"), manifest))
        elif manifest.status == "ok":
            rebuild = f"{model} --graph {graph}" if graph != "model" else model
            log.warning("engine %s not used: %s; rebuild it with emoedge build %s --precision %s",
                        manifest_path.with_suffix(".engine"), problem, rebuild, precision)
    return found


def find_engine(
    cache: Path, model: str, model_sha256: str, trt_version: str, gpu: str, precision: str, graph: str = "model"
) -> Path | None:
    """The usable engine for this graph file, TensorRT and GPU, or None (``usable_engines`` says which are)."""
    found = usable_engines(cache, model, model_sha256, trt_version, gpu, precision, graph)
    return found[0][0] if found else None


def other_builds(cache: Path, model: str, precision: str, graph: str = "model") -> list[EngineManifest]:
    """Manifests of usable engines of this graph and precision built for another graph file, TensorRT or GPU:
    what a user is told about when no engine fits this machine."""
    return [m for _, m in read_manifests(cache)
            if (m.key.model, m.key.graph, m.key.precision, m.status) == (model, graph, precision, "ok")]
