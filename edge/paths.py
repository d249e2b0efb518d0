"""Where EmoEdge finds data sets, models and its cache.

Every location can be overridden by an argument or an environment variable; nothing is a machine path.
"""

from __future__ import annotations

import os
from pathlib import Path

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
