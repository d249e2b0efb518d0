"""Error types that the command line turns into one clear line and a non-zero exit."""

from __future__ import annotations

import re


class EmoEdgeError(Exception):
    """Base of every error EmoEdge reports to a user (not a bug: bad input or a missing part)."""

    exit_code = 2


class ConfigError(EmoEdgeError):
    """The config file is malformed or does not validate."""


class CardError(EmoEdgeError):
    """A model card is malformed, or does not match its model file."""


class ModelError(EmoEdgeError):
    """A model or engine file is missing, corrupt or unusable."""


class InputError(EmoEdgeError):
    """A feed given to a runner has wrong names, shapes or dtypes."""


class BackendUnavailable(EmoEdgeError):
    """A backend that was asked for cannot run on this machine; the message says how to get it."""

    exit_code = 3


class InferenceError(ModelError):
    """A backend failed on one batch (ONNX Runtime or TensorRT raised): that window is skipped, the stream goes on."""


_URL_PASSWORD = re.compile(r"(?i)([a-z][a-z0-9+.\-]*://[^\s/@:]*):[^\s/@]*@")


def redact_url(text: str) -> str:
    """Any ``scheme://user:password@`` in ``text`` with the password replaced by ``***`` (for every message we print)."""
    return _URL_PASSWORD.sub(r"\1:***@", text)
