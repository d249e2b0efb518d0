"""``emoedge doctor``: what this machine has, what is missing, and how to get it.

Exit status is non-zero only when something *required* is missing (the CPU runtime stack); a missing
GPU, TensorRT, camera or broker is reported, not failed, since ONNX Runtime on the CPU runs everywhere.
"""

from __future__ import annotations

import argparse
import glob
import json
import platform
import sys
from dataclasses import asdict, dataclass
from typing import Any

from edge.verbs import add_verb


@dataclass
class Check:
    name: str
    ok: bool
    value: str
    required: bool = False
    hint: str = ""


def register(sub: Any) -> None:
    parser = add_verb(
        sub, "doctor", "say what this machine has: backends, GPU, TensorRT, cameras, serial ports, broker",
        "  emoedge doctor\n  emoedge doctor --json\n  emoedge doctor --config device.toml   # also checks its broker",
    )
    parser.add_argument("--json", action="store_true", help="one JSON object for scripts")
    parser.add_argument("--config", help="device config whose broker and models to check")
    parser.add_argument("--mqtt", help="broker URL to check (overrides the config's)")
    parser.add_argument("--models", help="models folder (default: EMOEDGE_MODELS or models/)")
    parser.set_defaults(func=run)


def _broker_answers(cfg: Any, timeout: float = 3.0) -> tuple[bool, str]:
    """Connect as ``emoedge run`` would (the same client factory: TLS, credentials) and wait for CONNACK."""
    from edge.errors import EmoEdgeError
    from edge.publish import Subscriber

    where = f"{cfg.host}:{cfg.port}{' (TLS)' if cfg.use_tls else ''}"
    try:
        sub = Subscriber(cfg, []).start()
    except EmoEdgeError as exc:
        return False, f"{where} unreachable: {exc}" if "cannot reach" in str(exc) else f"{where}: {exc}"
    try:
        if not sub.connack.wait(timeout):
            return False, f"{where} accepted TCP but sent no CONNACK within {timeout:.0f} s"
        if sub.refused:
            return False, sub.refused
        return True, f"{where} answers"
    finally:
        sub.stop()


def collect(config_path: str | None = None, mqtt_url: str | None = None, models: str | None = None) -> dict[str, Any]:
    """Everything doctor knows, as a JSON-ready dict (``checks`` plus structured sections)."""
    from edge.backends import probe

    checks: list[Check] = []
    report: dict[str, Any] = {"python": platform.python_version(), "platform": platform.platform()}
    checks.append(Check("python", sys.version_info >= (3, 10), platform.python_version(), True, "Python 3.10 or newer"))

    for module, label, hint in (
        ("numpy", "numpy", "pip install numpy"),
        ("onnx", "onnx", "pip install onnx"),
        ("serial", "pyserial", "pip install pyserial"),
        ("paho.mqtt", "paho-mqtt", "pip install 'paho-mqtt>=2'"),
    ):
        version, why = probe.import_status(module)
        if module == "paho.mqtt":
            import importlib.metadata as md

            try:
                version = md.version("paho-mqtt")
            except md.PackageNotFoundError:
                pass
        checks.append(Check(label, version is not None, version or why or "", True, hint))

    ort_version, why = probe.import_status("onnxruntime")
    providers: list[str] = []
    if ort_version:
        import onnxruntime

        providers = list(onnxruntime.get_available_providers())
    report["onnxruntime"] = {"version": ort_version, "providers": providers, "error": why}
    checks.append(Check(
        "onnxruntime", "CPUExecutionProvider" in providers,
        f"{ort_version} ({', '.join(providers)})" if ort_version else (why or ""), True, "pip install onnxruntime",
    ))

    cv_version, why = probe.import_status("cv2")
    cascades = False
    if cv_version:
        import os

        import cv2

        data = getattr(cv2, "data", None)
        cascades = bool(data) and os.path.isfile(os.path.join(data.haarcascades, "haarcascade_frontalface_default.xml"))
    report["opencv"] = {"version": cv_version, "haar_cascades": cascades, "error": why}
    checks.append(Check("opencv", cv_version is not None, cv_version or why or "", True, "pip install 'opencv-python-headless<5'"))
    checks.append(Check(
        "haar cascades", cascades, "present" if cascades else "missing", True,
        "the face crop needs cv2.data.haarcascades: use opencv-python-headless 4.x (OpenCV 5 wheels dropped them)",
    ))

    trt_version, trt_why = probe.import_status("tensorrt")
    pycuda_version, pycuda_why = probe.import_status("pycuda")
    report["tensorrt"] = {"available": trt_version is not None, "version": trt_version, "error": trt_why}
    report["pycuda"] = {"available": pycuda_version is not None, "version": pycuda_version, "error": pycuda_why}
    checks.append(Check(
        "tensorrt", trt_version is not None, trt_version or "not installed", False,
        "optional: JetPack's python3-libnvinfer on a Jetson, or pip install 'emoedge[trt]'",
    ))
    checks.append(Check("pycuda", pycuda_version is not None, pycuda_version or "not installed", False,
                        "optional, for TensorRT: pip install 'emoedge[trt]'"))
    gpus = probe.cuda_gpus()
    report["gpus"] = [asdict(g) for g in gpus]
    checks.append(Check(
        "gpu", bool(gpus),
        "; ".join(f"{g.name} (sm {g.compute_capability}, {g.memory_mib} MiB)" for g in gpus) or "none", False,
        "optional: without a CUDA GPU, models run on ONNX Runtime CPU",
    ))
    jetson = probe.jetson_info()
    report["jetson"] = jetson
    if jetson:
        checks.append(Check("jetson", True, f"{jetson['model']}; {jetson['l4t_release']}; {jetson['power_mode']}"))

    cameras = sorted(glob.glob("/dev/video*"))
    report["cameras"] = cameras
    checks.append(Check("cameras", bool(cameras), ", ".join(cameras) or "none", False, "optional"))
    try:
        from serial.tools import list_ports

        ports = [
            {"device": p.device, "vid": p.vid, "pid": p.pid, "serial_number": p.serial_number, "description": p.description}
            for p in list_ports.comports()
        ]
    except Exception:  # pyserial missing: already reported above
        ports = []
    report["serial_ports"] = ports
    checks.append(Check("serial ports", bool(ports), ", ".join(p["device"] for p in ports) or "none", False, "optional"))

    config = None
    if config_path:
        from edge.config import load_config

        config = load_config(config_path)
    from edge.config import mqtt_with

    mq = mqtt_with(config.mqtt if config is not None else None, url=mqtt_url)
    ok, detail = _broker_answers(mq)
    report["broker"] = {"host": mq.host, "port": mq.port, "tls": mq.use_tls, "reachable": ok, "detail": detail}
    checks.append(Check("mqtt broker", ok, detail, False, "start one (apt install mosquitto) or use emoedge run --demo"))

    report["models"] = _model_backends(models, config)
    for m in report["models"]:
        checks.append(Check(f"model {m['name']}", m["ok"], m["detail"], False, m.get("hint", "")))

    report["checks"] = [asdict(c) for c in checks]
    report["ok"] = all(c.ok for c in checks if c.required)
    report["missing_required"] = [c.name for c in checks if c.required and not c.ok]
    return report


def _model_backends(models: str | None, config: Any) -> list[dict[str, Any]]:
    """For each shipped model: does it load, which precision and backend it runs at here, and why.

    Runs the device check (``edge.trust``) of every precision the config asks for (default ``auto``):
    each verdict with its agreement and batch-1 latency, the one in use, and why the others are not."""
    from edge.backends import open_runner
    from edge.card import Model, list_models
    from edge.errors import EmoEdgeError
    from edge.trust import check_model

    out = []
    for folder in list_models(models):
        precision, backend = "auto", "auto"
        if config is not None and folder.name in config.models:
            precision = config.models[folder.name].precision
            backend = config.models[folder.name].backend or config.backend.default

        def open_for(model: Model, backend: str = backend) -> Any:
            return open_runner(model, backend=backend, precision=model.precision, threads=1)

        try:
            status = check_model(folder, precision, open_for)
            chosen = status["backend"]
        except EmoEdgeError as exc:
            out.append({"name": folder.name, "ok": False, "precision": precision, "backend": None,
                        "detail": str(exc).splitlines()[0], "hint": str(exc)})
            continue
        checks = "; ".join(
            f"{p} {'passed' if c['passed'] else 'FAILED'}"
            + (f" ({c['agreement'] * 100:.1f}% agreement on {c['n']} {c['data']})" if c["agreement"] is not None else "")
            for p, c in status["checks"].items()
        )
        detail = f"{precision} -> {status['active']} on {chosen}: {status['reason']}" + (f" [checks: {checks}]" if checks else "")
        failed = [p for p, c in status["checks"].items() if not c["passed"]] + list(status["problems"])
        out.append({"name": folder.name, "ok": True, "precision": status["active"], "requested": precision,
                    "backend": chosen, "device_check": status, "detail": detail,
                    "hint": f"{', '.join(failed)} not trusted here: see device_check" if failed else ""})
    return out


def run(args: argparse.Namespace) -> int:
    report = collect(args.config, args.mqtt, args.models)
    if args.json:
        print(json.dumps(report, indent=2, default=str))
    else:
        from rich.console import Console
        from rich.markup import escape
        from rich.table import Table

        table = Table(title="emoedge doctor")
        for col in ("check", "status", "value", "how to get it"):
            table.add_column(col, overflow="fold")
        for c in report["checks"]:
            status = "ok" if c["ok"] else ("MISSING" if c["required"] else "absent")
            style = "green" if c["ok"] else ("bold red" if c["required"] else "yellow")
            table.add_row(escape(c["name"]), f"[{style}]{status}[/]", escape(c["value"]), "" if c["ok"] else escape(c["hint"]))
        Console().print(table)
        if not report["ok"]:
            print("required and missing: " + ", ".join(report["missing_required"]), file=sys.stderr)
    return 0 if report["ok"] else 1
