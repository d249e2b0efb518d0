"""The benchmark harness behind ``emoedge bench`` and the on-device measurement tools.

- ``targets``: what is measured (options, model folders or peers) and how a target is opened (through
  ``edge.backends.open_runner``), fed and run; shared by the harness and the memory probe
- ``harness``: rows of model x backend x precision (latency, throughput, load time, memory, accuracy)
- ``memory``: peak memory of one model, in a fresh process
- ``report``: Markdown, JSON and CSV, and comparison with a baseline run
- ``plots``: PNG plots (matplotlib, optional extra ``plots``)
- ``environment``: what the run ran on (CPU, libraries, GPU, TensorRT, Jetson, power mode, clocks)
- ``tegrastats``: parse and sample tegrastats on a Jetson; energy per inference
- ``peer``: the mini-Xception face peer
- ``e2e``: the sensor bridge's end-to-end benchmark (per-stage latencies from ``edge.pipeline.stats``)

This module stays light: the CLI imports it to build ``--help``.
"""

from edge.kinds import BENCH_BACKENDS

__all__ = ["BENCH_BACKENDS"]
