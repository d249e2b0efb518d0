"""The MQTT topics of one device, in one place (the contract is in DESIGN.md, "MQTT contract")."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Topics:
    """Topic names under ``<root>/<device_id>/``."""

    root: str
    device_id: str

    @property
    def base(self) -> str:
        return f"{self.root}/{self.device_id}"

    @property
    def status(self) -> str:
        return f"{self.base}/status"

    @property
    def state(self) -> str:
        return f"{self.base}/state"

    @property
    def stats(self) -> str:
        return f"{self.base}/stats"

    def estimate(self, source: str) -> str:
        return f"{self.base}/{source}/estimate"

    def explanation(self, source: str) -> str:
        """The scene model's sentence for the estimate with the same ``seq``."""
        return f"{self.base}/{source}/explanation"

    def enabled(self, source: str) -> str:
        return f"{self.base}/{source}/enabled"

    def enabled_set(self, source: str) -> str:
        return f"{self.base}/{source}/enabled/set"

    @property
    def enabled_set_filter(self) -> str:
        return f"{self.base}/+/enabled/set"

    @property
    def enroll_set(self) -> str:
        """Enrollment commands (select, label, fit, forget; ``edge.enroll``)."""
        return f"{self.base}/enroll/set"

    @property
    def enroll(self) -> str:
        """The reply to each enrollment command (not retained)."""
        return f"{self.base}/enroll"

    def source_of_enabled_set(self, topic: str) -> str | None:
        """``<base>/<source>/enabled/set`` -> ``source`` (None for any other topic)."""
        prefix, suffix = self.base + "/", "/enabled/set"
        if topic.startswith(prefix) and topic.endswith(suffix):
            source = topic[len(prefix) : -len(suffix)]
            return source if source and "/" not in source else None
        return None

    def parse(self, topic: str) -> tuple[str, str | None, str] | None:
        """``<root>/<device>/state`` -> (device, None, "state"); ``<root>/<device>/<source>/estimate`` ->
        (device, source, "estimate"); None for a topic outside this contract (works with device ``+``)."""
        prefix = self.root + "/"
        if not topic.startswith(prefix):
            return None
        parts = topic[len(prefix):].split("/")
        if self.device_id != "+" and parts[0] != self.device_id:
            return None
        if len(parts) == 2 and parts[1] in ("state", "status", "stats"):
            return parts[0], None, parts[1]
        if len(parts) == 3 and parts[2] in ("estimate", "enabled", "explanation"):
            return parts[0], parts[1], parts[2]
        return None
