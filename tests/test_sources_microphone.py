"""Microphone capture for real, through sounddevice -> PortAudio -> ALSA, from an ALSA device that
reads a raw file (the ``file`` plugin): no sound card is needed, and nothing is mocked. Skips where
sounddevice or the PortAudio library is missing."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent

ASOUNDRC = """
pcm.emoedge_test {{
    type plug
    slave {{ pcm "emoedge_file" format S16_LE rate 16000 channels 1 }}
    hint {{ show on description "EmoEdge test input (a raw file)" }}
}}
pcm.emoedge_file {{
    type file
    slave.pcm "null"
    file "/dev/null"
    infile "{infile}"
    format "raw"
}}
"""

CAPTURE = """
import json, sys
import numpy as np
from firmware_bridge.sources.microphone import MicrophoneSource, list_input_devices
names = [d["name"] for d in list_input_devices()]
with MicrophoneSource("mic", device="emoedge_test", sample_rate=16000, block_s=0.1) as mic:
    blocks = [mic.read(timeout=5) for _ in range(5)]
    stats = mic.stats()
print(json.dumps({"names": names, "audio": np.concatenate([b.data for b in blocks]).tolist(),
                  "kinds": [b.kind for b in blocks], "rates": [b.sample_rate for b in blocks],
                  "board_times": [b.board_time for b in blocks], "stats": stats}))
"""


def test_capture_through_portaudio_and_alsa(tmp_path: Path) -> None:
    try:
        import sounddevice  # noqa: F401
    except ImportError:
        pytest.skip("sounddevice not installed: pip install 'emoedge[audio]'")
    except OSError as exc:
        pytest.skip(f"PortAudio library missing ({exc}): apt install libportaudio2")
    pcm = (np.sin(np.arange(16000 * 2) * 2 * np.pi * 440 / 16000) * 10000).astype("<i2")
    infile = tmp_path / "in.raw"
    infile.write_bytes(pcm.tobytes())
    (tmp_path / ".asoundrc").write_text(ASOUNDRC.format(infile=infile))
    env = {**os.environ, "HOME": str(tmp_path)}  # ALSA reads ~/.asoundrc when PortAudio starts
    result = subprocess.run([sys.executable, "-c", CAPTURE], cwd=ROOT, env=env, capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stderr[-2000:]
    out = json.loads(result.stdout.strip().splitlines()[-1])
    assert "emoedge_test" in out["names"]
    assert out["kinds"] == ["audio"] * 5 and out["rates"] == [16000.0] * 5
    audio = np.array(out["audio"], dtype=np.float32)
    assert audio.size == 8000
    np.testing.assert_allclose(audio, pcm[:8000].astype(np.float32) / 32768, atol=1e-4)
    assert out["stats"]["opens"] == 1 and out["stats"]["dropped"] == 0
