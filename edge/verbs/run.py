"""``emoedge run``: the sensor bridge (sources -> models -> fusion -> MQTT), or ``--demo`` with nothing attached."""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
import time
from typing import Any

from edge.verbs import add_verb

log = logging.getLogger("edge.run")


def register(sub: Any) -> None:
    parser = add_verb(
        sub, "run", "run the sensor bridge: read sources, run the models, publish estimates and the fused state over MQTT",
        "  emoedge run --config device.toml\n"
        "  emoedge run --config device.toml --mqtt mqtts://broker.local:8883 --duration 60\n"
        "  emoedge run --demo                       # embedded broker, simulated EEG board, replayed speech\n"
        "  emoedge run --demo --video clip.mp4      # ... and faces from a video file (or --video 0 for a camera)\n"
        "  emoedge watch --mqtt mqtt://127.0.0.1:PORT --device demo   # in another terminal",
    )
    parser.add_argument("--config", metavar="FILE", help="device config (TOML); see: emoedge config example")
    parser.add_argument("--mqtt", metavar="URL", help="broker URL, overriding [mqtt].url (mqtt://host:port, mqtts://...)")
    parser.add_argument("--duration", type=float, metavar="SECONDS", help="stop after this long (default: until Ctrl-C or SIGTERM)")
    parser.add_argument("--demo", action="store_true", help="no hardware, no broker: embedded broker and simulated sensors")
    parser.add_argument("--video", metavar="FILE|INDEX", help="with --demo: faces from this video file or camera index")
    parser.add_argument("--plain", action="store_true", help="plain log lines even on a terminal (no live table)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from edge.config import load_config
    from edge.errors import ConfigError

    if args.duration is not None and args.duration <= 0:
        raise ConfigError(f"--duration must be positive, got {args.duration}")
    if args.video and not args.demo:
        raise ConfigError("--video is a --demo option; in a config, add a [[sources]] entry with kind = \"camera\"")
    if args.demo:
        from edge.demo import Demo

        with Demo(video=args.video, mqtt_url=args.mqtt, config_path=args.config) as demo:
            print(f"demo: broker {demo.broker_url} (MQTT 3.1.1); watch it with: "
                  f"emoedge watch --mqtt {demo.broker_url} --device {demo.config.device_id}", flush=True)
            return serve(demo.config, args.duration, args.plain, extra_sources=demo.sources)
    if not args.config:
        raise ConfigError("give --config FILE (see: emoedge config example), or --demo")
    config = load_config(args.config)
    if args.mqtt:
        config = with_broker(config, args.mqtt)
    return serve(config, args.duration, args.plain)


def with_broker(config: Any, url: str) -> Any:
    """The config with ``[mqtt].url`` replaced (validated like the file's value; errors never repeat a password)."""
    from edge.config import mqtt_with

    return config.model_copy(update={"mqtt": mqtt_with(config.mqtt, url=url)})


def serve(config: Any, duration: float | None, plain: bool, extra_sources: dict[str, Any] | None = None) -> int:
    """Run the pipeline and the publisher until stopped; the exit code says how it ended."""
    from edge.errors import EmoEdgeError
    from edge.pipeline import Pipeline
    from edge.publish import Publisher

    stop = threading.Event()
    received: list[str] = []

    def on_signal(signum: int, frame: Any) -> None:
        received.append(signal.Signals(signum).name)
        stop.set()

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    pipeline: Pipeline | None = None
    publisher = Publisher(
        config.mqtt, config.device_id, sources=[s.name for s in config.sources if s.enabled],
        on_enable=lambda name, on: pipeline.set_enabled(name, on) if pipeline is not None else None,
    )
    evicted_before = publisher.evicted
    try:
        publisher.start(wait_s=5.0)
        pipeline = Pipeline(config, publisher, sources=extra_sources).start()
        log.info("running: device %s, sources %s, broker %s", config.device_id, ", ".join(pipeline.runs), config.mqtt.url)
        _display(pipeline, publisher, stop, duration, plain or not sys.stdout.isatty())
    finally:
        if pipeline is not None:
            pipeline.stop()
        publisher.stop(flush_s=5.0)
        for s, handler in previous.items():
            signal.signal(s, handler)
    publisher.check()
    assert pipeline is not None  # set, or the try block raised
    if pipeline.errors:
        raise EmoEdgeError("the pipeline stopped on an error: " + "; ".join(pipeline.errors))
    left, evicted = len(publisher.outbox), publisher.evicted - evicted_before
    print(f"stopped{' on ' + received[0] if received else ''}: "
          + ", ".join(f"{n} {r.estimates} estimates" + (f" ({r.errors} skipped)" if r.errors else "")
                      for n, r in pipeline.runs.items())
          + (f"; {left} message(s) kept in the outbox for the next start" if left else "")
          + (f"; {evicted} oldest message(s) evicted from the full outbox (mqtt.outbox.max_messages)" if evicted else ""),
          flush=True)
    return 0


def _display(pipeline: Any, publisher: Any, stop: threading.Event, duration: float | None, plain: bool) -> None:
    """Wait until stopped, showing a live table on a terminal or a log line every few seconds otherwise."""
    end = time.monotonic() + duration if duration else None

    def finished() -> bool:
        return stop.is_set() or pipeline.stopping or publisher.error is not None or (end is not None and time.monotonic() >= end)

    if plain:
        last = time.monotonic()
        while not finished():
            time.sleep(0.1)
            if time.monotonic() - last >= 5.0:
                last = time.monotonic()
                for row in pipeline.snapshot():
                    print(_line(row), flush=True)
        return
    from rich.live import Live

    with Live(_table(pipeline, publisher), refresh_per_second=4, transient=False) as live:
        while not finished():
            time.sleep(0.25)
            live.update(_table(pipeline, publisher))


def _line(row: dict[str, Any]) -> str:
    p50 = "-" if row["p50"] is None else f"{row['p50']:.1f}"
    p99 = "-" if row["p99"] is None else f"{row['p99']:.1f}"
    return (f"{row['source']}: {row['kind']} {'on' if row['enabled'] else 'off'}, {row['estimates']} estimates, "
            f"dropped {row['dropped']}, latency p50 {p50} ms p99 {p99} ms, latest {row['latest']}")


def _table(pipeline: Any, publisher: Any) -> Any:
    from rich.table import Table

    stats = publisher.stats()
    state = pipeline.state
    title = (f"EmoEdge {pipeline.config.device_id}: state {state.label} (v {state.valence:+.2f}, a {state.arousal:+.2f}, "
             f"conf {state.confidence:.2f})" if state else f"EmoEdge {pipeline.config.device_id}: waiting for estimates")
    rows = pipeline.snapshot()
    backends = ", ".join(sorted({r["backend"] for r in rows}))
    caption = (f"broker {'connected' if stats['connected'] else 'AWAY'}; outbox {stats['outbox']} "
               f"(evicted {stats['evicted']}); sent {stats['sent']}; backend {backends}; latency = capture to publish")
    table = Table(title=title, caption=caption)
    for col in ("source", "kind", "on", "received", "estimates", "dropped", "p50 ms", "p99 ms", "latest"):
        table.add_column(col, justify="right" if col in ("received", "estimates", "dropped", "p50 ms", "p99 ms") else "left",
                         no_wrap=col != "latest")
    for row in rows:
        table.add_row(
            row["source"], row["kind"], "yes" if row["enabled"] else "no", str(row["received"]), str(row["estimates"]),
            str(row["dropped"]), "-" if row["p50"] is None else f"{row['p50']:.1f}",
            "-" if row["p99"] is None else f"{row['p99']:.1f}", row["latest"],
        )
    return table
