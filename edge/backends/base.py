"""The runner interface every backend implements (in the style of Polygraphy's runners).

A runner is a context manager: entering it allocates (a session, an execution context, buffers),
leaving it frees them. ``infer`` takes and returns dicts of named arrays, checks the feed against the
model's input metadata first, and records its own latency. Runners know nothing about emotions.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from types import TracebackType

import numpy as np

from edge.errors import InputError


@dataclass(frozen=True)
class TensorMeta:
    """Name, shape (None or a symbolic name for a dynamic dimension) and dtype of one tensor."""

    name: str
    shape: tuple[int | str | None, ...]
    dtype: np.dtype

    def describe(self) -> str:
        dims = ", ".join("?" if d is None else str(d) for d in self.shape)
        return f"{self.name}[{dims}] {self.dtype}"


class Runner(ABC):
    """Base of every backend runner."""

    backend: str = "?"

    def __init__(self) -> None:
        self.last_latency_ms: float | None = None
        self.reason = ""  # why this backend was chosen, for logs and doctor
        self._active = False

    # --- lifecycle -------------------------------------------------------------------------
    def __enter__(self) -> Runner:
        self.activate()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.deactivate()

    def activate(self) -> None:
        if not self._active:
            self._activate()
            self._active = True

    def deactivate(self) -> None:
        if self._active:
            self._active = False
            self._deactivate()

    @property
    def is_active(self) -> bool:
        return self._active

    # --- metadata and inference -------------------------------------------------------------
    @property
    @abstractmethod
    def inputs(self) -> Sequence[TensorMeta]: ...

    @property
    @abstractmethod
    def outputs(self) -> Sequence[TensorMeta]: ...

    def infer(self, feed: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run one batch. Raises InputError naming the tensor when the feed does not fit."""
        if not self._active:
            raise RuntimeError(f"{type(self).__name__} is not active: use it as a context manager")
        self.check_feed(feed)
        start = time.perf_counter()
        out = self._infer(feed)
        self.last_latency_ms = (time.perf_counter() - start) * 1e3
        return out

    def check_feed(self, feed: Mapping[str, np.ndarray]) -> None:
        expected = {m.name: m for m in self.inputs}
        missing = sorted(set(expected) - set(feed))
        unknown = sorted(set(feed) - set(expected))
        if missing or unknown:
            parts = []
            if missing:
                parts.append(f"missing input(s) {missing}")
            if unknown:
                parts.append(f"unknown input(s) {unknown}")
            want = ", ".join(m.describe() for m in self.inputs)
            raise InputError(f"{'; '.join(parts)}; the model takes {want}")
        for name, meta in expected.items():
            array = feed[name]
            if not isinstance(array, np.ndarray):
                raise InputError(f"input '{name}': expected a numpy array, got {type(array).__name__}")
            if array.dtype != meta.dtype:
                raise InputError(f"input '{name}': expected dtype {meta.dtype}, got {array.dtype}")
            fits = array.ndim == len(meta.shape) and all(
                not isinstance(d, int) or d == s for d, s in zip(meta.shape, array.shape, strict=False)
            )
            if not fits:
                want = "(" + ", ".join("?" if not isinstance(d, int) else str(d) for d in meta.shape) + ")"
                raise InputError(f"input '{name}': expected shape {want}, got {tuple(array.shape)}")

    @abstractmethod
    def _activate(self) -> None: ...

    @abstractmethod
    def _deactivate(self) -> None: ...

    @abstractmethod
    def _infer(self, feed: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]: ...
