"""Trust earned on the device: an artifact other than FP32 is checked against FP32 here before it is used.

An INT8 file that passed its gate on the machine that made it can answer differently on another CPU
(ONNX Runtime's INT8 kernels differ by instruction set; see ``edge/export/int8.py``), and a TensorRT
engine belongs to one GPU. So the first time a model is loaded at a precision other than FP32 on a
device, that artifact is compared with FP32 on this device:

- on the model's calibration samples when they are present (``calibration/<name>/samples.npz``);
- otherwise on the first live windows, in shadow mode: FP32 and the candidate both run, estimates are
  published from FP32, and the candidate takes over only once it has matched FP32 on
  ``LIVE_WINDOWS`` windows.

The measure is top-1 agreement with FP32, held against the agreement the artifact's gate recorded on
the machine that made it (``card.artifacts``): it passes when it is no more than ``margin`` below,
where the margin is three binomial standard errors of the sample (at least two points). The verdict
(agreement, loss on labelled samples, batch-1 latency of both precisions, samples used) is cached in
``EMOEDGE_CACHE/verdicts/``, keyed by the artifact's sha256, the runtime and its version, and the CPU's
instruction sets or the GPU; a changed key checks again. An artifact whose sha256 is in no passed
record of its card never ran through the gate and is refused outright.

``precision = "auto"`` is the fastest precision that passed here, by batch-1 latency on this device
(a lower precision must be at least ``AUTO_MIN_GAIN`` faster to be preferred). A precision that fails
falls back to the next: int8 -> fp16 -> fp32.
"""

from edge.trust.runner import CheckedRunner, check_model, label_of
from edge.trust.verdicts import (
    AUTO_MIN_GAIN,
    LIVE_WINDOWS,
    ArtifactRefused,
    Verdict,
    agreement_threshold,
    device_identity,
    gate_record,
    load_verdict,
    record_engine_verdict,
    save_verdict,
    verdict_dir,
    verdict_path,
)

__all__ = [
    "AUTO_MIN_GAIN", "LIVE_WINDOWS", "ArtifactRefused", "CheckedRunner", "Verdict", "agreement_threshold",
    "check_model", "device_identity", "gate_record", "label_of", "load_verdict", "record_engine_verdict",
    "save_verdict", "verdict_dir", "verdict_path",
]
