"""Names and manifests of cached TensorRT engines (in the style of jetson-inference's engine cache).

An engine belongs to one model file, one TensorRT version, one GPU, one precision and one batch
profile, so the file name says all of these, and a JSON manifest beside the plain engine file records
them with the model's sha256. The runtime uses this module to find an engine without importing
TensorRT's builder; ``edge.export.engine`` writes them.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from edge.paths import cache_dir

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

    @property
    def stem(self) -> str:
        dla = f"-dla{self.dla_core}" if self.dla_core is not None else ""
        return (
            f"{slug(self.model)}-{self.model_sha256[:16]}-trt{slug(self.trt_version)}-{slug(self.gpu)}"
            f"-{self.precision}-b{self.min_batch}-{self.opt_batch}-{self.max_batch}{dla}"
        )

    @property
    def engine_name(self) -> str:
        return self.stem + ".engine"

    @property
    def manifest_name(self) -> str:
        return self.stem + ".json"


@dataclass
class EngineManifest:
    key: EngineKey
    onnx_file: str
    created_at: str
    build_seconds: float | None = None
    status: str = "ok"  # "ok", or "rejected" when it failed the accuracy gate
    gate: dict[str, Any] = field(default_factory=dict)
    version: int = MANIFEST_VERSION

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> EngineManifest:
        data = json.loads(text)
        data["key"] = EngineKey(**data["key"])
        return cls(**data)


def engine_cache_dir(arg: str | os.PathLike[str] | None = None) -> Path:
    return cache_dir(arg) / "engines"


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


def find_engine(
    cache: Path, model: str, model_sha256: str, trt_version: str, gpu: str, precision: str
) -> Path | None:
    """The usable engine for this model file, TensorRT and GPU, or None.

    Engines that failed their accuracy gate, or whose file is gone, are never returned.
    """
    for manifest_path, manifest in read_manifests(cache):
        k = manifest.key
        if (k.model, k.model_sha256, k.trt_version, k.gpu, k.precision) != (
            model, model_sha256, trt_version, gpu, precision
        ):
            continue
        engine = manifest_path.with_suffix(".engine")
        if manifest.status == "ok" and engine.is_file():
            return engine
    return None
