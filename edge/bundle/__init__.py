"""``emoedge bundle``: everything a Jetson needs to run a configured EmoEdge, in one checked archive.

The bundle holds the ONNX artifacts (FP32, FP16, INT8 where present) with their cards, the
calibration sets, the device config, a wheel of EmoEdge itself, a systemd unit, ``install.sh`` and
``manifest.json`` (sha256 of every file, and versions). Engines are never shipped: they belong to one
GPU and one TensorRT version, so the device builds them on first start (``edge.bundle.prepare``).
"""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from datetime import datetime, timezone
from importlib import resources
from pathlib import Path
from typing import Any

from edge import __version__
from edge.errors import ConfigError, EmoEdgeError, ModelError

BUNDLE_FORMAT = 1
TOP = "emoedge-bundle"
# Files of the source tree that make the wheel (copied to a temporary folder, so the checkout stays clean).
SOURCE_PARTS = ("pyproject.toml", "README.md", "LICENSE", "edge", "firmware_bridge")
TEMPLATES = ("install.sh", "emoedge.service")


class BundleError(EmoEdgeError):
    """The bundle cannot be made from what was given."""


def _sha256(path: Path) -> str:
    from edge.card import sha256_file

    return sha256_file(path)


def build_requirements(source: Path) -> tuple[list[str], list[str]]:
    """pyproject's ``[build-system] requires``, and which of them this environment does not meet, as
    ``"setuptools>=77 (have 65.5.0)"``: the presence of a module says nothing about its version."""
    # this runs in the environment that builds, which may hold only pip and setuptools
    from importlib import metadata

    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover - Python 3.10 on JetPack 6
        import tomli as tomllib

    try:
        data = tomllib.loads((source / "pyproject.toml").read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise BundleError(f"{source / 'pyproject.toml'}: cannot read the build requirements: {exc}") from None
    requires = [str(r) for r in data.get("build-system", {}).get("requires", ["setuptools", "wheel"])]
    try:
        from packaging.requirements import InvalidRequirement, Requirement
    except ImportError:  # a bare venv: pip carries its own copy
        try:
            from pip._vendor.packaging.requirements import InvalidRequirement, Requirement  # type: ignore[no-redef]
        except ImportError:
            return requires, [f"{r} (cannot be checked here)" for r in requires]
    unmet = []
    for text in requires:
        try:
            req = Requirement(text)
        except InvalidRequirement:
            unmet.append(f"{text} (cannot be parsed)")
            continue
        if req.marker is not None and not req.marker.evaluate():
            continue
        try:
            have = metadata.version(req.name)
        except metadata.PackageNotFoundError:
            unmet.append(f"{text} (not installed)")
            continue
        if not req.specifier.contains(have, prereleases=True):
            unmet.append(f"{text} (have {have})")
    return requires, unmet


def build_wheel(out_dir: Path, source: Path | None = None) -> Path:
    """A wheel of EmoEdge from its source tree: offline where this environment meets the build requirements of
    pyproject.toml, else by pip's isolated build (which needs the package index)."""
    if source is None:
        from edge.paths import PROJECT_ROOT

        source = PROJECT_ROOT
    if not (source / "pyproject.toml").is_file():
        raise BundleError(
            f"no EmoEdge source tree at {source} to build a wheel from (an installed copy has none): "
            "give one with --wheel emoedge-*.whl"
        )
    with tempfile.TemporaryDirectory(prefix="emoedge-src-") as tmp:
        copy = Path(tmp) / "src"
        copy.mkdir()
        ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info", "build", "dist")
        for part in SOURCE_PARTS:
            src = source / part
            if src.is_dir():
                shutil.copytree(src, copy / part, ignore=ignore)
            elif src.is_file():
                shutil.copy2(src, copy / part)
        requires, unmet = build_requirements(source)
        cmd = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "-w", str(out_dir), str(copy)]
        # Offline, with this environment's build tools, only where they meet pyproject's [build-system]; else
        # pip's isolated build, which fetches them from the package index.
        offline = not unmet
        done = subprocess.run(cmd[:5] + ["--no-build-isolation"] * offline + cmd[5:], capture_output=True, text=True)
        if done.returncode != 0:
            tail = (done.stderr or done.stdout).strip().splitlines()[-5:]
            if unmet:
                raise BundleError(
                    f"building the EmoEdge wheel needs {', '.join(requires)} (pyproject.toml [build-system]); this "
                    f"environment has {', '.join(unmet)}, and pip's isolated build could not get them. Install them "
                    f"with: {sys.executable} -m pip install {' '.join(repr(r) for r in requires)}  (or give --wheel)."
                    "\n  " + "\n  ".join(tail)
                )
            raise BundleError("building the EmoEdge wheel failed (or give --wheel):\n  " + "\n  ".join(tail))
    wheels = sorted(out_dir.glob("emoedge-*.whl"))
    if not wheels:
        raise BundleError(f"pip wheel wrote no emoedge wheel into {out_dir}")
    return wheels[-1]


def _model_folders(config: Any, names: list[str] | None, models_dir: str | None) -> dict[str, tuple[Path, str]]:
    """name -> (folder, the precision the config runs it at), for the asked or the config's enabled models."""
    from edge.card import resolve_model_folder

    chosen = names or [n for n, s in config.models.items() if s.enabled]
    if not chosen:
        raise ConfigError("the config enables no models and none were given with --models: the bundle would be empty")
    out = {}
    for name in chosen:
        settings = config.models.get(name)
        if settings is None and names:
            raise ConfigError(f"model '{name}' is not in the config's [models] (it has: {', '.join(config.models) or 'none'})")
        folder = Path(settings.path) if settings is not None and settings.path else resolve_model_folder(name, models_dir)
        out[name] = (folder, settings.precision if settings is not None else "fp32")
    return out


def build_bundle(
    config_path: str | os.PathLike[str],
    out_path: str | os.PathLike[str],
    models: list[str] | None = None,
    models_dir: str | None = None,
    calibration: str | None = None,
    wheel: str | os.PathLike[str] | None = None,
) -> dict[str, Any]:
    """Write the bundle archive; returns its manifest."""
    from edge.bench.environment import library_versions
    from edge.card import PRECISION_FILES, artifact_name, load_model
    from edge.config import load_config
    from edge.paths import calibration_dir

    config_file = Path(config_path)
    config = load_config(config_file)
    folders = _model_folders(config, models, models_dir)
    cal_root = calibration_dir(calibration)

    with tempfile.TemporaryDirectory(prefix="emoedge-bundle-") as tmp:
        stage = Path(tmp) / TOP
        stage.mkdir()
        model_records: dict[str, Any] = {}
        for name, (folder, precision) in folders.items():
            fp32 = load_model(folder, "fp32")  # validates the card against the file; refuses untrained models
            target = stage / "models" / fp32.card.name
            target.mkdir(parents=True)
            shutil.copy2(fp32.card_path, target / "card.toml")
            shipped = {}
            for prec in PRECISION_FILES:
                filename = artifact_name(fp32.card.graph, prec)
                if (folder / filename).is_file():
                    model = fp32 if prec == "fp32" else load_model(folder, prec)
                    shutil.copy2(model.path, target / filename)
                    shipped[prec] = model.sha256
            if precision not in shipped:
                raise ModelError(
                    f"the config runs '{name}' at {precision}, but {folder} has no {artifact_name(fp32.card.graph, precision)}; "
                    f"make it with: emoedge quantize {name} --precision {precision}"
                )
            record: dict[str, Any] = {"version": fp32.card.version, "precision": precision, "artifacts": shipped}
            cal = cal_root / fp32.card.name
            if cal.is_dir():
                shutil.copytree(cal, stage / "calibration" / fp32.card.name,
                                ignore=shutil.ignore_patterns(".*", "__pycache__"))
                record["calibration"] = f"calibration/{fp32.card.name}"
            model_records[fp32.card.name] = record

        (stage / "config").mkdir()
        shutil.copy2(config_file, stage / "config" / "config.toml")
        wheels = stage / "wheels"
        wheels.mkdir()
        if wheel:
            w = Path(wheel)
            if not w.is_file() or not w.name.startswith("emoedge-") or w.suffix != ".whl":
                raise BundleError(f"--wheel {w}: not an emoedge-*.whl file")
            shutil.copy2(w, wheels / w.name)
        else:
            build_wheel(wheels)
        files_dir = resources.files("edge.bundle")
        for name in TEMPLATES:
            (stage / name).write_bytes(files_dir.joinpath(name).read_bytes())
        (stage / "install.sh").chmod(0o755)

        files = {
            p.relative_to(stage).as_posix(): {"sha256": _sha256(p), "bytes": p.stat().st_size}
            for p in sorted(stage.rglob("*")) if p.is_file()
        }
        manifest = {
            "bundle_format": BUNDLE_FORMAT,
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "emoedge_version": __version__,
            "device_id": config.device_id,
            "built_with": {"python": sys.version.split()[0], "libraries": library_versions()},
            "requires_python": ">=3.10",
            "models": model_records,
            "wheel": next(k for k in files if k.startswith("wheels/")),
            "files": files,
        }
        (stage / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
        _write_tar(stage, Path(out_path))
    return manifest


def _write_tar(stage: Path, out: Path) -> None:
    """A gzip tarball with one top folder, owned by root, in sorted order."""
    out.parent.mkdir(parents=True, exist_ok=True)
    now = int(time.time())
    tmp = out.with_name(out.name + ".part")
    with tarfile.open(tmp, "w:gz") as tar:
        for path in [stage, *sorted(stage.rglob("*"))]:
            info = tar.gettarinfo(str(path), arcname=(Path(TOP) / path.relative_to(stage)).as_posix())
            info.uid = info.gid = 0
            info.uname = info.gname = "root"
            info.mtime = now
            if path.is_file():
                with path.open("rb") as f:
                    tar.addfile(info, io.BufferedReader(f))  # type: ignore[arg-type]
            else:
                tar.addfile(info)
    tmp.replace(out)
