"""From a trained FP32 model to what ships and what runs on a device.

- ``calibrate``: calibration sample sets (``calibration/<name>/``) drawn from the training split;
- ``fp16`` and ``int8``: the FP16 ONNX and the QDQ INT8 ONNX;
- ``gate``: the accuracy gate that decides whether an artifact (or an engine) may be used;
- ``quantize``: calibration set + converter + gate + card record, as ``emoedge quantize`` runs it;
- ``build`` and ``engine``: TensorRT engines in the device-keyed cache (``engine`` holds the only
  TensorRT calls, imported lazily and type-checked against tensorrt-stubs).

Nothing here is imported by the runtime; every module imports its heavy dependencies lazily.
"""
