"""Sources -> features -> runners -> fusion -> publisher, with threads and bounded queues.

One reader thread per source and one inference thread per source:

* EEG and audio are never dropped: the reader cuts sliding windows (``window_s``, ``hop_s``) and
  puts them on a bounded queue with a blocking put, so a slow model pushes back on the source (whose
  own queue blocks too) instead of losing samples. The inference thread takes every window waiting
  (up to ``max_batch``) and runs them as one batch.
* Video: the newest frame wins. The reader keeps one slot; a frame that is replaced before the
  inference thread took it is counted in ``dropped``. Faces are detected at reduced resolution every
  ``detect_every`` frames and tracked in between (``edge.tracker``); all faces of a frame run as one
  batch and each estimate carries its ``track_id``.

Every estimate is published (outbox first) and handed to fusion; a timer thread publishes the fused
state on change and at least every ``state_interval_s``, and ``stats`` every ``stats_interval_s``.

A fault stays where it happened: a block that fails ``firmware_bridge.sources.checks`` (rate zero or
absurd, NaN, wrong shape) is dropped and counted (``malformed``); a change of a board's layout is
taken after FIRST or when it persists, and restarts that source's windows with a log line; a window
whose features or inference raise anything is skipped and counted (``errors``, ``last_error``), and
a source whose windows keep failing is reported (``failing``, a rate-limited log line) while every
next window is tried again. A source thread that dies takes only that source with it.
``stop()`` stops the sources, lets the threads finish every complete window already read, publishes
the last state and closes every runner it opened.

Modules, one job each:

* ``windows``: ``WindowBuffer`` (sliding windows) and ``NewestFrame`` (the video slot);
* ``readout``: model outputs -> ``Reading`` (probabilities, label, confidence, valence, arousal, OOD);
  ``label_heads``, shared with ``emoedge eval``;
* ``stats``: the stage names and their latencies (``Lap``, ``StageTimes``) for p50/p99;
* ``source_run``: one source's model, features, queue and counters (``SourceRun``), its stats entry;
* ``worker``: one source's reader and inference loops, where a fault is skipped and counted;
* ``core``: ``Pipeline``, the lifecycle (a context manager), fusion, state and stats publishing.

The features themselves are ``edge.features.recipes`` (named by the card); sources come from
``firmware_bridge.sources.make_source``.
"""

from edge.pipeline.core import Pipeline

__all__ = ["Pipeline"]
