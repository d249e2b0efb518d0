"""Re-make speech_demo.wav: three short phrases synthesised with espeak-ng, joined, 16 kHz mono PCM16.

Run from the repository root:  python edge/demo_media/make_speech.py   (needs espeak-ng and scipy)
The voice settings differ per phrase (pitch, speed, amplitude) to give the demo some prosody; the
recording is the project's own work and carries no data-set terms.
"""

from __future__ import annotations

import subprocess
import tempfile
import wave
from pathlib import Path

import numpy as np
from scipy.signal import resample_poly

PHRASES = [  # (text, espeak-ng options)
    ("Hello! So good to see you. What a wonderful day!", ["-p", "70", "-s", "200", "-a", "160"]),
    ("I feel tired, and sad, today.", ["-p", "25", "-s", "150", "-a", "90"]),
    ("Watch out! Something is wrong!", ["-p", "60", "-s", "200", "-a", "190"]),
]
RATE = 16000
OUT = Path(__file__).resolve().parent / "speech_demo.wav"


def synth(text: str, options: list[str]) -> np.ndarray:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "p.wav"
        subprocess.run(["espeak-ng", "-v", "en-us", *options, "-w", str(path), text], check=True)
        with wave.open(str(path)) as w:
            rate = w.getframerate()
            pcm = np.frombuffer(w.readframes(w.getnframes()), dtype=np.int16).astype(np.float32) / 32768.0
    return resample_poly(pcm, RATE, rate).astype(np.float32)


def main() -> None:
    pause = np.zeros(int(0.25 * RATE), np.float32)
    audio = np.concatenate([np.concatenate([synth(t, o), pause]) for t, o in PHRASES])
    pcm = (np.clip(audio, -1, 1) * 32767).astype(np.int16)
    with wave.open(str(OUT), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(RATE)
        w.writeframes(pcm.tobytes())
    print(f"{OUT}: {len(pcm) / RATE:.1f} s, {OUT.stat().st_size} bytes")


if __name__ == "__main__":
    main()
