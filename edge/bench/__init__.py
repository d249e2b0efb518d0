"""The benchmark harness behind ``emoedge bench`` and the on-device measurement tools.

- ``harness``: rows of model x backend x precision (latency, throughput, load time, memory, accuracy)
- ``report``: Markdown, JSON and CSV, and comparison with a baseline run
- ``plots``: PNG plots (matplotlib, optional extra ``plots``)
- ``environment``: what the run ran on (CPU, libraries, GPU, TensorRT, Jetson, power mode, clocks)
- ``tegrastats``: parse and sample tegrastats on a Jetson; energy per inference
- ``peer``: the mini-Xception face peer
- ``e2e``: the sensor bridge's end-to-end benchmark (owned by the bridge)

This module stays light: the CLI imports it to build ``--help``.
"""

from edge.kinds import BENCH_BACKENDS

__all__ = ["BENCH_BACKENDS"]
