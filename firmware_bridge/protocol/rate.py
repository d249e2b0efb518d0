"""Sample rates measured from arrival times on the host (what a board really sends, against what it declares)."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class ArrivalRate:
    """Per stream kind (``eeg``, ``audio``): samples counted since the first block and the host time of the last."""

    first: dict[str, float] = field(default_factory=dict)
    last: dict[str, tuple[float, int]] = field(default_factory=dict)  # host time of the last block, samples after the first
    nominal: dict[str, float] = field(default_factory=dict)  # the rate the board declares

    def add(self, kind: str, n: int, host_time: float, nominal: float) -> None:
        """A block of ``n`` samples arrived at ``host_time`` (the first block only starts the clock)."""
        self.nominal[kind] = nominal
        if kind not in self.first:
            self.first[kind] = host_time
            self.last[kind] = (host_time, 0)
        else:
            _, counted = self.last[kind]
            self.last[kind] = (host_time, counted + n)

    def reset(self) -> None:
        """The board restarted: measure afresh (the declared rates stay)."""
        self.first.clear()
        self.last.clear()

    @property
    def main(self) -> str | None:
        """The main stream: EEG if there is one, else audio."""
        return next((k for k in ("eeg", "audio") if k in self.first), None)

    def hz(self, kind: str | None = None) -> float:
        """Samples per host second of ``kind`` (default: the main stream); 0 until two blocks span some time."""
        kind = kind or self.main
        if kind is None or kind not in self.first:
            return 0.0
        last, counted = self.last[kind]
        span = last - self.first[kind]
        return counted / span if span > 0 else 0.0
