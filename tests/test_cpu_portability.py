"""INT8 answers that do not depend on the CPU: the shipped artifacts under an emulated AVX2 CPU without VNNI.

This test says what it depends on: it runs ONNX Runtime under ``qemu-x86_64 -cpu Haswell`` (AVX2 and FMA,
no AVX-512, no VNNI), through ``tools/cpu_check.py``'s worker, and skips where qemu-user or the data is absent.
It pins both the cause and the fix: with full 8-bit weights the AVX2 kernels saturate (the same file answers
differently from VNNI machines); with the shipped 7-bit weights the answers are the same as here.
"""

from __future__ import annotations

import json
import platform
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from edge.card import load_model
from edge.evaluation import evaluator_for
from edge.export.calibrate import load_calibration_set, make_calibration_set
from edge.export.int8 import quantize_int8

ROOT = Path(__file__).resolve().parent.parent
WORKER = ROOT / "tools" / "cpu_check.py"


def run_worker(prefix: list[str], inputs: Path, models: list[Path], out: Path) -> list[dict[str, np.ndarray]]:
    done = subprocess.run([*prefix, sys.executable, str(WORKER), "--worker", str(inputs), str(out), *map(str, models)],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    json.loads(done.stdout.strip().splitlines()[-1])
    recorded = np.load(out)
    return [{k.split("/", 1)[1]: recorded[k] for k in recorded.files if k.startswith(f"{i}/")} for i in range(len(models))]


@pytest.mark.slow
@pytest.mark.data
def test_face_int8_answers_the_same_on_avx2_without_vnni(data_dir: Path, tmp_path: Path) -> None:
    qemu = shutil.which("qemu-x86_64")
    if qemu is None or platform.machine() != "x86_64":
        pytest.skip("needs qemu-user on an x86_64 machine (apt-get install qemu-user) to emulate an AVX2 CPU")
    fp32, int8 = load_model("face", "fp32"), load_model("face", "int8")
    evaluator = evaluator_for(fp32.card)
    data = evaluator.load_split(fp32.card, data_dir / "fer2013", "validation", limit=48, seed=0)
    inputs = tmp_path / "inputs.npz"
    np.savez(inputs, **data.inputs)
    # the same model with full 8-bit weights, calibrated like the shipped one (from the training split)
    make_calibration_set(fp32.card, data_dir / "fer2013", tmp_path / "calibration" / "face", count=64, seed=0)
    batches = load_calibration_set(tmp_path / "calibration" / "face", fp32.card).batches(32)
    eight_bit = tmp_path / "model.int8-8bit-weights.onnx"
    quantize_int8(fp32.path, eight_bit, batches, reduce_range=False)
    models = [fp32.path, int8.path, eight_bit]

    native = run_worker([], inputs, models, tmp_path / "native.npz")
    haswell = run_worker([qemu, "-cpu", "Haswell"], inputs, models, tmp_path / "haswell.npz")

    def agreement(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> float:
        return float(np.mean(a["logits"].argmax(1) == b["logits"].argmax(1)))

    # FP32 is the same everywhere, and so is the shipped INT8 file (7-bit weights: nothing saturates)
    assert agreement(native[0], haswell[0]) == 1.0
    assert np.allclose(native[1]["logits"], haswell[1]["logits"], atol=1e-4)
    assert agreement(haswell[1], haswell[0]) >= 0.9
    # the cause, pinned: with 8-bit weights the AVX2 answers differ from those of this machine's kernels
    diff = float(np.max(np.abs(native[2]["logits"] - haswell[2]["logits"])))
    assert diff > 0.5 or agreement(haswell[2], haswell[0]) < agreement(haswell[1], haswell[0]), diff
