"""TensorRT engines of the scene decoder: one optimisation profile that covers the key/value cache.

The decoder's inputs are dynamic in more than the batch: ``tokens`` (batch, seq) and every
``past_{key,value}_{i}`` (batch, heads, past, head_dim). The profile spans batch 1..B, seq 1..cap+1
(a whole prompt at once, or one token a step) and past 0..cap+1, optimised for the decoding step
(seq 1, past half the cap). B is the beam, twice over with guidance (``SceneDecoder`` runs every
hypothesis a second time without the emotion part of ``cond``). ``emoedge build scene --graph decoder``
builds it (``edge.export.build``); the engine's key records B and the cap, and before decoding
``open_decoder_engine`` checks with ``profile_covers`` that the beam and cap asked for fit: a longer
cache is a clear InputError up front, never a call into TensorRT outside its profile.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from edge.backends.base import Runner
from edge.card import GraphSpec, Model, artifact_name, sha256_file
from edge.errors import BackendUnavailable, InputError, ModelError
from edge.export.engine import BuildRequest
from edge.scene.model import decoder_spec

Shape = tuple[int, ...]
ShapeRange = tuple[str, Shape, Shape, Shape]  # input name, min, opt, max


def decoder_batch(beam: int, guidance: float) -> int:
    """The largest batch decoding feeds: the beam, twice over with guidance."""
    return max(1, beam) * (2 if guidance > 0 else 1)


def decoding_profile(spec: GraphSpec, beam: int | None = None, max_tokens: int | None = None,
                     guidance: float | None = None) -> tuple[int, int]:
    """(largest batch, length cap) of decoding with these settings, each defaulting to the card's."""
    p = spec.params
    beam = beam or int(p.get("beam", 1))
    guidance = guidance if guidance is not None else float(p.get("guidance", 0.0))
    return decoder_batch(beam, guidance), max_tokens or int(p.get("max_tokens", 24))


def decoder_shapes(spec: GraphSpec, batch: int, max_tokens: int) -> tuple[ShapeRange, ...]:
    """(name, min, opt, max) for every decoder input, for batches up to ``batch`` and a cap of ``max_tokens``."""
    p = spec.params
    heads, dh, layers = int(p["heads"]), int(p["head_dim"]), int(p["layers"])
    cond = next(int(t.shape[1]) for t in spec.inputs if t.name == "cond")
    batch = max(1, batch)
    shapes: list[ShapeRange] = [
        ("tokens", (1, 1), (batch, 1), (batch, max_tokens + 1)),
        ("cond", (1, cond), (batch, cond), (batch, cond)),
    ]
    for i in range(layers):
        for kind in ("key", "value"):
            shapes.append((f"past_{kind}_{i}", (1, heads, 0, dh), (batch, heads, max_tokens // 2, dh),
                           (batch, heads, max_tokens + 1, dh)))
    return tuple(shapes)


def decoder_build_request(model: Model, precision: str = "fp32", beam: int | None = None, max_tokens: int | None = None,
                          guidance: float | None = None, workspace_mb: int | None = None,
                          timing_cache: Path | None = None, dla_core: int | None = None) -> BuildRequest:
    """The BuildRequest (``edge.export.engine.build_serialized_engine``) of a scene model's decoder."""
    spec = decoder_spec(model)
    path = model.folder / artifact_name(spec.name, precision)
    if not path.is_file():
        raise ModelError(f"{path}: no {precision} decoder to build an engine from"
                         + (f"; make it with: emoedge quantize {model.name} --graph decoder --precision {precision} "
                            "--data DIR" if precision != "fp32" else ""))
    batch, cap = decoding_profile(spec, beam, max_tokens, guidance)
    return BuildRequest(onnx_path=path, precision=precision, min_batch=1, opt_batch=batch, max_batch=batch,
                        workspace_mb=workspace_mb, dla_core=dla_core, timing_cache=timing_cache,
                        shapes=decoder_shapes(spec, batch, cap))


def profile_covers(shapes: Sequence[ShapeRange], beam: int, max_tokens: int, guidance: float = 0.0) -> None:
    """Raise InputError when decoding with ``beam``, ``max_tokens`` and ``guidance`` would leave the profile."""
    batch = decoder_batch(beam, guidance)
    for name, _lo, _opt, hi in shapes:
        if name.startswith("past_") and hi[2] < max_tokens:
            raise InputError(f"decoder engine: its profile holds a cache of {hi[2]} tokens, decoding asks for "
                             f"{max_tokens}; rebuild the engine with a larger length cap (emoedge build --graph decoder "
                             f"--max-tokens {max_tokens})")
        if hi[0] < batch:
            raise InputError(f"decoder engine: its profile allows batch {hi[0]}, beam {beam}"
                             + (" with guidance (every hypothesis twice)" if guidance > 0 else "")
                             + f" needs {batch}; rebuild the engine with emoedge build --graph decoder --beam {beam}")


def open_decoder_engine(model: Model, precision: str, beam: int, max_tokens: int, guidance: float,
                        cache: str | os.PathLike[str] | None = None) -> Runner:
    """The TensorRT runner (not yet entered) of a cached decoder engine of this decoder file, TensorRT and GPU
    whose profile covers the decoding asked for. BackendUnavailable when there is none; InputError (from
    ``profile_covers``) when the engines there are built for a smaller beam or cap."""
    from edge.backends.engine_cache import engine_cache_dir, usable_engines
    from edge.export.build import tensorrt_runtime

    spec = decoder_spec(model)
    path = model.folder / artifact_name(spec.name, precision)
    if not path.is_file():
        raise ModelError(f"{path}: the scene decoder is missing")
    open_engine, trt_version, gpu = tensorrt_runtime()
    root = engine_cache_dir(cache)
    found = usable_engines(root, model.name, sha256_file(path), trt_version, gpu, precision, graph=spec.name)
    if not found:
        raise BackendUnavailable(
            f"no {precision} decoder engine for {model.name} ({path.name}) built with TensorRT {trt_version} on {gpu} "
            f"in {root}; build one with emoedge build {model.name} --graph decoder --precision {precision} --data DIR")
    refusal: InputError | None = None
    for engine, manifest in sorted(found, key=lambda f: (f[1].key.max_batch, f[1].key.max_tokens or 0)):
        if manifest.key.max_tokens is None:
            continue
        try:
            profile_covers(decoder_shapes(spec, manifest.key.max_batch, manifest.key.max_tokens), beam, max_tokens, guidance)
        except InputError as exc:
            refusal = exc
            continue
        return open_engine(engine)
    raise refusal or InputError(f"decoder engines of {model.name} in {root} record no profile; rebuild them")
