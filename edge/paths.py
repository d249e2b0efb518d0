"""Where EmoEdge finds data sets, models and its cache.

Every location can be overridden by an argument or an environment variable; nothing is a machine path.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import platformdirs

PROJECT_ROOT = Path(__file__).resolve().parent.parent


def data_dir(arg: str | os.PathLike[str] | None = None) -> Path:
    """Research data folder: the argument, else ``EMOEDGE_DATA``, else ``../shared/data`` beside the project."""
    if arg:
        return Path(arg)
    env = os.environ.get("EMOEDGE_DATA")
    if env:
        return Path(env)
    return (PROJECT_ROOT.parent / "shared" / "data").resolve()


def models_dir(arg: str | os.PathLike[str] | None = None) -> Path:
    """Model zoo folder: the argument, else ``EMOEDGE_MODELS``, else ``models/`` of this checkout or bundle."""
    if arg:
        return Path(arg)
    env = os.environ.get("EMOEDGE_MODELS")
    if env:
        return Path(env)
    return PROJECT_ROOT / "models"


def calibration_dir(arg: str | os.PathLike[str] | None = None) -> Path:
    """Calibration sets: the argument, else ``EMOEDGE_CALIBRATION``, else ``calibration/`` of this checkout."""
    if arg:
        return Path(arg)
    env = os.environ.get("EMOEDGE_CALIBRATION")
    if env:
        return Path(env)
    return PROJECT_ROOT / "calibration"


def cache_dir(arg: str | os.PathLike[str] | None = None) -> Path:
    """Writable cache (engines, timing caches, feature caches): ``EMOEDGE_CACHE`` or the user's cache folder.

    Kept outside the install so that a read-only install still works.
    """
    if arg:
        return Path(arg)
    env = os.environ.get("EMOEDGE_CACHE")
    if env:
        return Path(env)
    return Path(platformdirs.user_cache_dir("emoedge"))


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike[str], mode: str = "w", permissions: int | None = None) -> Iterator[IO[Any]]:
    """A file object whose contents replace ``path`` whole when the block ends, or not at all if it raises.

    It writes a uniquely named temporary file beside ``path`` and renames it over ``path``: two writers at once
    (two training folds filling one cache, two processes saving one profile) each land a whole file, and a
    process killed mid-write leaves no torn file for the next reader. ``permissions`` default to those of the
    file replaced, else 0644; a profile asks for 0600. ``mode`` is ``"w"`` (UTF-8 text) or ``"wb"``.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    if permissions is None:
        try:
            permissions = target.stat().st_mode & 0o777
        except OSError:
            permissions = 0o644
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, mode, encoding=None if "b" in mode else "utf-8") as f:
            yield f
        os.chmod(tmp, permissions)
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
