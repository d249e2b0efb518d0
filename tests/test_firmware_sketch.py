"""The Arduino example sketch compiles against the encoder header (syntax and types), with g++ and a
minimal stand-in for Arduino.h: no Arduino toolchain or board is available here, so the sketch is not
flashed or run."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

FIRMWARE = Path(__file__).resolve().parent.parent / "firmware_bridge" / "firmware"

ARDUINO_STAND_IN = """
// Stand-in for the Arduino core, only so that the example sketch can be compiled on a PC.
#pragma once
#include <stdint.h>
#include <stddef.h>
#include <math.h>
struct SerialStandIn {
  void begin(unsigned long) {}
  int availableForWrite() { return 64; }
  size_t write(const uint8_t *, size_t n) { return n; }
};
static SerialStandIn Serial;
static inline uint32_t micros() { return 0; }
static inline uint32_t millis() { return 0; }
"""


def test_example_sketch_compiles(tmp_path: Path) -> None:
    gxx, gcc = shutil.which("g++"), shutil.which("gcc")
    if gxx is None or gcc is None:
        pytest.skip("g++/gcc not found")
    (tmp_path / "Arduino.h").write_text(ARDUINO_STAND_IN)
    sketch = tmp_path / "sketch.cpp"
    sketch.write_text((FIRMWARE / "examples" / "emoedge_eeg" / "emoedge_eeg.ino").read_text()
                      + "\nint main() { setup(); loop(); return 0; }\n")
    obj = tmp_path / "emoedge_frame.o"
    subprocess.run([gcc, "-std=c99", "-Wall", "-Wextra", "-Werror", "-c", str(FIRMWARE / "emoedge_frame.c"), "-o",
                    str(obj)], check=True)
    result = subprocess.run([gxx, "-std=c++11", "-Wall", "-Wextra", "-Werror", f"-I{tmp_path}", f"-I{FIRMWARE}",
                             str(sketch), str(obj), "-o", str(tmp_path / "sketch")], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert subprocess.run([str(tmp_path / "sketch")], timeout=10).returncode == 0
