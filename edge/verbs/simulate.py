"""``emoedge simulate eeg|audio``: a virtual sensor board streaming the frame protocol to a serial port."""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

from edge.errors import EmoEdgeError
from edge.verbs import add_verb


def register(sub: Any) -> None:
    parser = add_verb(
        sub, "simulate", "stream a simulated EEG or audio board to a serial port or a new pseudo-terminal",
        "  emoedge simulate eeg --pty                      # prints the port to read, e.g. /dev/pts/5\n"
        "  emoedge simulate eeg --port /tmp/board --rate 256 --script 10:0:0,10:0.8:0.8,10:-0.7:-0.5\n"
        "  emoedge simulate eeg --pty --headset epoc        # 14-channel Emotiv EPOC-like headset (for histn)\n"
        "  emoedge simulate eeg --pty --headset epoc --rate 256 --flat AF3 --saturated T7\n"
        "  emoedge simulate audio --pty --wav speech.wav --seconds 30\n"
        "  # a named pair of ports: socat -d -d pty,raw,echo=0,link=/tmp/board pty,raw,echo=0,link=/tmp/host\n"
        "  #   then: emoedge simulate eeg --port /tmp/board  and  emoedge listen /tmp/host",
    )
    parser.add_argument("sensor", choices=["eeg", "audio"])
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--port", help="serial port or pty path to write to")
    where.add_argument("--pty", action="store_true", help="open a new pseudo-terminal and print the path to read")
    parser.add_argument("--rate", type=float, help="sample rate in Hz (EEG default 128; audio: the WAV's)")
    parser.add_argument("--wav", help="audio: a PCM16 WAV file to stream (default: a synthetic voice)")
    parser.add_argument("--seconds", type=float, help="stop after N seconds of board time (default: run until Ctrl-C)")
    parser.add_argument("--channels", type=int, default=32, help="EEG: the first N of DEAP's 32 electrodes (default 32)")
    parser.add_argument("--headset", choices=["deap", "epoc"], default="deap",
                        help="EEG: 'deap' = a 32-channel board in DEAP's montage (band-power model eeg); 'epoc' = a "
                        "14-channel Emotiv EPOC-like headset, AF3 ... AF4 at 128 Hz around its 4,200 uV DC level (raw model histn)")
    parser.add_argument("--flat", default="", help="EEG epoc: comma-separated channels that send a flat line")
    parser.add_argument("--saturated", default="", help="EEG epoc: comma-separated channels clipped at a rail")
    parser.add_argument("--block", type=int, help="samples per frame (EEG default 8, audio 256)")
    parser.add_argument("--script", help="EEG: valence/arousal segments SECONDS:VALENCE:AROUSAL,... (values in [-1, 1])")
    parser.add_argument("--clock-ppm", type=float, default=0.0, help="make the board clock run this many ppm fast")
    parser.add_argument("--baud", type=int, default=921600, help="baud rate when --port is a real serial port")
    parser.add_argument("--fast", action="store_true", help="send as fast as the reader takes it (no pacing, no drops)")
    parser.set_defaults(func=run)


def parse_script(text: str) -> list[tuple[float, float, float]]:
    script = []
    for part in text.split(","):
        try:
            seconds, valence, arousal = (float(x) for x in part.split(":"))
        except ValueError:
            raise EmoEdgeError(f"--script: expected SECONDS:VALENCE:AROUSAL, got {part!r}") from None
        if seconds <= 0 or not (-1 <= valence <= 1 and -1 <= arousal <= 1):
            raise EmoEdgeError(f"--script: {part!r}: seconds must be > 0 and valence, arousal in [-1, 1]")
        script.append((seconds, valence, arousal))
    return script


def run(args: argparse.Namespace) -> int:
    from firmware_bridge.simulated_boards import (
        DEAP_CHANNELS,
        AudioBoardSimulator,
        EegBoardSimulator,
        EmotivBoardSimulator,
    )
    from firmware_bridge.simulator import open_pty

    pair = open_pty() if args.pty else None
    port: str | int = pair.master_fd if pair else args.port
    common: dict[str, Any] = {"baudrate": args.baud, "realtime": not args.fast, "clock_ppm": args.clock_ppm,
                              "seconds": args.seconds}
    if args.block:
        common["block"] = args.block
    try:
        if args.sensor == "eeg" and args.headset == "epoc":
            try:
                sim: Any = EmotivBoardSimulator(
                    port, rate=args.rate or 128.0, script=parse_script(args.script) if args.script else None,
                    flat=[c for c in args.flat.split(",") if c], saturated=[c for c in args.saturated.split(",") if c], **common)
            except ValueError as exc:
                raise EmoEdgeError(f"simulate eeg --headset epoc: {exc}") from None
        elif args.sensor == "eeg":
            if not 1 <= args.channels <= len(DEAP_CHANNELS):
                raise EmoEdgeError(f"--channels must be 1..{len(DEAP_CHANNELS)}")
            sim = EegBoardSimulator(port, rate=args.rate or 128.0, channels=DEAP_CHANNELS[: args.channels],
                                         script=parse_script(args.script) if args.script else None, **common)
        else:
            try:
                sim = AudioBoardSimulator(port, wav=args.wav, rate=int(args.rate) if args.rate else None, **common)
            except (OSError, ValueError, EOFError) as exc:
                raise EmoEdgeError(f"--wav: {exc}") from None
        where = pair.slave_path if pair else args.port
        print(where if pair else f"simulated {args.sensor} board streaming to {where}", flush=True)
        print(f"simulated {args.sensor} board: {sim.rate:g} Hz, {sim.block} samples a frame; read it with: "
              f"emoedge listen {where}", file=sys.stderr, flush=True)
        sim.start()
        try:
            while not sim.done.is_set():
                time.sleep(0.1)
        except KeyboardInterrupt:
            pass
        finally:
            sim.stop()
        stats = sim.stats()
        print(f"sent {stats['frames_sent']} frames ({stats['bytes_sent']} bytes); samples dropped because the port "
              f"was full or gone: {stats['board_dropped']}", file=sys.stderr)
        return 0
    finally:
        if pair:
            pair.close()
