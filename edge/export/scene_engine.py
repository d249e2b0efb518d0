"""TensorRT build requests for the scene decoder: one optimisation profile that covers the key/value cache.

The decoder's inputs are dynamic in more than the batch: ``tokens`` (batch, seq) and every
``past_{key,value}_{i}`` (batch, heads, past, head_dim). The profile spans batch 1..beam, seq 1..cap
(a whole prompt at once, or one token a step) and past 0..cap, optimised for the decoding step
(seq 1, past half the cap). A cache longer than the profile is refused by the engine runner with a
clear message (``TensorRTRunner``: "shape ... is outside the engine's profile"), and
``profile_covers`` says so before decoding starts.
"""

from __future__ import annotations

from pathlib import Path

from edge.card import GraphSpec, Model, artifact_name
from edge.errors import InputError, ModelError
from edge.export.engine import BuildRequest

Shape = tuple[int, ...]


def decoder_shapes(spec: GraphSpec, beam: int, max_tokens: int) -> tuple[tuple[str, Shape, Shape, Shape], ...]:
    """(name, min, opt, max) for every decoder input."""
    p = spec.params
    heads, dh, layers = int(p["heads"]), int(p["head_dim"]), int(p["layers"])
    cond = next(int(t.shape[1]) for t in spec.inputs if t.name == "cond")
    beam = max(1, beam)
    shapes: list[tuple[str, Shape, Shape, Shape]] = [
        ("tokens", (1, 1), (beam, 1), (beam, max_tokens + 1)),
        ("cond", (1, cond), (beam, cond), (beam, cond)),
    ]
    for i in range(layers):
        for kind in ("key", "value"):
            shapes.append((f"past_{kind}_{i}", (1, heads, 0, dh), (beam, heads, max_tokens // 2, dh),
                           (beam, heads, max_tokens + 1, dh)))
    return tuple(shapes)


def decoder_build_request(model: Model, precision: str = "fp32", beam: int | None = None, max_tokens: int | None = None,
                          workspace_mb: int | None = None, timing_cache: Path | None = None) -> BuildRequest:
    """The BuildRequest (``edge.export.engine.build_serialized_engine``) of a scene model's decoder."""
    spec = next((g for g in model.card.graphs if g.name == "decoder"), None)
    if spec is None:
        raise ModelError(f"model '{model.name}' has no decoder graph")
    path = model.folder / artifact_name(spec.name, precision)
    if not path.is_file():
        raise ModelError(f"{path}: no {precision} decoder to build an engine from")
    beam = beam or int(spec.params.get("beam", 1))
    cap = max_tokens or int(spec.params.get("max_tokens", 24))
    return BuildRequest(onnx_path=path, precision=precision, min_batch=1, opt_batch=beam, max_batch=beam,
                        workspace_mb=workspace_mb, timing_cache=timing_cache, shapes=decoder_shapes(spec, beam, cap))


def profile_covers(request: BuildRequest, beam: int, max_tokens: int) -> None:
    """Raise InputError when decoding with ``beam`` and ``max_tokens`` would leave the engine's profile."""
    for name, _lo, _opt, hi in request.shapes:
        if name.startswith("past_") and hi[2] < max_tokens:
            raise InputError(f"decoder engine: its profile holds a cache of {hi[2]} tokens, decoding asks for "
                             f"{max_tokens}; rebuild the engine with a larger length cap")
        if hi[0] < beam:
            raise InputError(f"decoder engine: its profile allows batch {hi[0]}, beam {beam} needs {beam}")
