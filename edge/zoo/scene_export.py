"""ONNX export of the scene graphs (checked against torch), parameter and FLOP counts, and the card."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from edge.card import FeatureRecipe, GraphSpec, ModelCard, QuantizationPolicy, TensorSpec, TrainingInfo
from edge.features.scene import DEFAULT_SIZE
from edge.scene.data import EMOTIONS
from edge.zoo.common import count_parameters, export_onnx, write_card

ENCODER_OUTPUTS = ["logits", "va", "embedding"]
TERMS = ("Emotion6 (Peng et al., CVPR 2015): academic research only, image copyright with the owners. "
         "OASIS (Kurdi et al. 2017): free for research; captions (elkhand, CS231n 2018) without a stated licence. "
         "ArtEmis (Achlioptas et al., CVPR 2021) explanations: the ArtEmis terms of use (research). "
         "NRC-VAD lexicon (Mohammad 2018): research and non-commercial use. "
         "EfficientNet-Lite0 ImageNet weights: Apache-2.0. The weights inherit the research-only, non-commercial terms.")


def flops(module: nn.Module, *example: torch.Tensor) -> int:
    """Multiply-adds x 2 of Conv2d and Linear layers for one forward pass of ``example`` (batch 1)."""
    total = 0

    def hook(layer: nn.Module, inputs: Any, output: torch.Tensor) -> None:
        nonlocal total
        if isinstance(layer, nn.Conv2d):
            k = layer.kernel_size[0] * layer.kernel_size[1] * layer.in_channels // layer.groups
            total += 2 * output.numel() * k
        elif isinstance(layer, nn.Linear):
            total += 2 * output.numel() * layer.in_features

    handles = [m.register_forward_hook(hook) for m in module.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    try:
        with torch.no_grad():
            module(*example)
    finally:
        for h in handles:
            h.remove()
    return int(total)


def onnx_parameters(path: Path) -> int:
    """Numbers stored in a graph's initializers: what the exported file really carries (no unused layers)."""
    import numpy as np
    import onnx

    return int(sum(np.prod(t.dims) for t in onnx.load(str(path)).graph.initializer))


def export_encoder(encoder: Any, path: Path, size: int = DEFAULT_SIZE) -> dict[str, Any]:
    """encoder.onnx: the mirror-averaged encoder; returns the ORT-vs-torch differences, parameters and FLOPs."""
    from edge.zoo.scene_encoder import MirrorMean

    graph = MirrorMean(encoder).eval()
    example = torch.rand(2, 3, size, size) * 255
    diffs = export_onnx(graph, example, path, "image", ENCODER_OUTPUTS, atol=1e-4, rtol=1e-3)
    return {"max_abs_diff": diffs, "parameters": onnx_parameters(path),
            "trained_parameters": count_parameters(encoder.top) if hasattr(encoder, "top") else None,  # type: ignore[arg-type]
            "flops": flops(graph, example[:1])}


def write_scene_card(out: Path, log: dict[str, Any], command: str, root: Path) -> Path:
    """card.toml of models/scene from the training log (metrics are added by ``emoedge eval scene --write-card``)."""
    exp = log["export"]
    recipe = log["recipe"]
    card = ModelCard(
        name="scene", version="1.0.0", modality="vision", graph="encoder", labels=EMOTIONS,
        description=("What a scene feels like: a 7-way emotion distribution, valence and arousal in [-1, 1] and a "
                     "256-d embedding from a photograph (EfficientNet-Lite0, last block and head fine-tuned), "
                     "and a short explanation from a small decoder (see graphs)."),
        inputs=[TensorSpec(name="image", shape=["batch", 3, DEFAULT_SIZE, DEFAULT_SIZE], layout="NCHW",
                           normalisation="RGB float 0..255, whole frame resized to 224x224 (INTER_AREA); "
                           "ImageNet mean/std applied inside the graph")],
        outputs=[TensorSpec(name="logits", shape=["batch", 7], meaning="logits over labels (emotion distribution)"),
                 TensorSpec(name="va", shape=["batch", 2],
                            meaning=("valence, arousal in [-1, 1]" + ("; arousal from the frozen network's levels (see notes: "
                                     "arousal branch)" if log.get("arousal_branch") else ""))),
                 TensorSpec(name="embedding", shape=["batch", 256],
                            meaning="hidden layer the heads read (ReLU), mean of the image's and its mirror's")],
        features=FeatureRecipe(recipe="edge.features.scene.scene_input", params={"size": DEFAULT_SIZE}),
        parameters=onnx_parameters(out / "encoder.onnx"),
        flops=int(exp["flops"]) + int((log.get("arousal_branch") or {}).get("flops", 0)),
        training=TrainingInfo(data=("Emotion6 (../shared/data/emotion6_256, 1680 images) and OASIS (../shared/data/oasis_256, 900 images), "
                           f"split by image: {log['split']['train']} train, {log['split']['held_out']} held out "
                           f"(sha256(set|file|seed) < fraction; edge.scene.data.is_held_out)"),
                              terms=TERMS, command=command, seed=log["seed"], seconds=log.get("seconds"),
                              holdout=dict(log["holdout"], rule="edge.scene.data.is_held_out", **log["split"])),
        quantization=QuantizationPolicy(max_loss_points=1.0, metric="accuracy"),
        notes=(f"Recipe: frozen Lite0 prefix features of 4 views per image cached once under EMOEDGE_CACHE "
               f"({log.get('cache_note') or str(log.get('cache_seconds')) + ' s'}), block 15 + head conv + "
               f"heads fine-tuned {recipe['epochs']} epochs (chosen by {recipe['folds']}-fold CV on the train part: "
               f"{log.get('cv', {}).get('mean_score_by_epoch')}), AdamW lr {recipe['lr']} (backbone x{recipe['backbone_lr_scale']}), "
               f"one-cycle, KL + {recipe['va_weight']} x MSE(va). {exp['trained_parameters']} trained parameters. "
               f"Held out, torch: {log['held_out_torch']}. Linear probe on the frozen pooled features (same split, L2 "
               f"{log['linear_probe']['l2']} by CV): {log['linear_probe'].get('held_out_per_set') or log['linear_probe']['held_out']}"
               f"{' (' + log['linear_probe']['note'] + ')' if log['linear_probe'].get('note') else ''}. "
               f"ORT vs torch max abs difference: "
               f"{exp['max_abs_diff']}. Decoder: {log.get('decoder_data')}; recipe {log.get('decoder_recipe')}; "
               f"decoding guidance chosen on training images: {log.get('guidance')}."
               + (f" Arousal branch (edge.zoo.scene.arousal_branch, --set stage=arousal): {log['arousal_branch']}."
                  if log.get("arousal_branch") else "")),
        graphs=[GraphSpec.model_validate(g) for g in log.get("graphs", [])],
        explain=log.get("explain", {}),
    )
    previous = out / "card.toml"
    if previous.is_file():  # measurements made since (eval, quantize) stay: they are about the same files
        from edge.card import load_card

        old = load_card(previous)
        card.metrics, card.artifacts, card.confidence, card.ood = old.metrics, old.artifacts, old.confidence, old.ood
        kept = {g.name: g.artifacts for g in old.graphs}  # the decoder's FP16/INT8 records too (they name their source)
        for spec in card.graphs:
            spec.artifacts = kept.get(spec.name, spec.artifacts)
    return write_card(card, out)


def _level_tensors(graph: Any, levels: tuple[int, ...]) -> list[str]:
    """Names of the frozen prefix's block outputs at ``levels`` in encoder.onnx: the plain pass's, then the
    mirrored pass's (the second pass starts at the second stem convolution; its nodes carry a ``_1``)."""
    import re

    from edge.errors import ModelError

    nodes = list(graph.node)
    stems = [i for i, n in enumerate(nodes) if n.op_type == "Conv" and "_conv_stem" in n.name]
    if len(stems) != 2:
        raise ModelError(f"encoder.onnx: expected two stem convolutions (image and mirror), found {len(stems)}")
    names: list[str] = []
    for part in (nodes[stems[0]:stems[1]], nodes[stems[1]:]):
        last: dict[int, str] = {}
        for n in part:
            m = re.match(r"/encoder/prefix/_blocks\.(\d+)(?:_1)?/", n.name)
            if m and n.op_type in ("Conv", "Add"):
                last[int(m.group(1))] = n.output[0]
        missing = [b for b in levels if b not in last]
        if missing:
            raise ModelError(f"encoder.onnx: no output found for prefix blocks {missing}")
        names += [last[b] for b in levels]
    return names


def add_arousal_branch(path: Path, net: Any, weight: Any, bias: float) -> dict[str, float]:
    """Rewrite encoder.onnx so that its arousal is ``edge.zoo.scene_encoder.ArousalBranch`` (frozen levels of
    both passes, ``weight``, ``bias``; ``net`` is the ImageNet network) and its valence stays the fine-tuned
    head's. Checks the rewritten graph against torch on two images; returns the largest arousal difference
    and the branch's FLOPs for one image. Refuses a graph that already has a branch."""
    import tempfile

    import numpy as np
    import onnx
    import onnxruntime as ort
    from onnx import helper, numpy_helper

    from edge.errors import ModelError
    from edge.zoo.common import OPSET
    from edge.zoo.scene_encoder import LEVELS, ArousalBranch, Prefix, level_outputs

    proto = onnx.load(str(path))
    g = proto.graph
    tag = "arousal_branch"
    if any(n.name.startswith(tag) for n in g.node):
        raise ModelError(f"{path}: already has an arousal branch (train the encoder again first)")
    sources = _level_tensors(g, LEVELS)
    branch = ArousalBranch(net, weight, bias).eval()
    prefix = Prefix(net).eval()
    example = torch.rand(2, 3, DEFAULT_SIZE, DEFAULT_SIZE) * 255
    with torch.no_grad():
        inputs = level_outputs(prefix, example) + level_outputs(prefix, torch.flip(example, dims=[3]))
        expected = branch(*inputs).numpy()[:, 0]
    in_names = [f"level{i}" for i in range(len(inputs))]
    with tempfile.TemporaryDirectory() as tmp, torch.no_grad():
        torch.onnx.export(branch, tuple(inputs), f"{tmp}/branch.onnx", input_names=in_names, output_names=["arousal"],
                          dynamic_axes={n: {0: "batch"} for n in [*in_names, "arousal"]}, opset_version=OPSET,
                          do_constant_folding=True, dynamo=False)
        sub = onnx.load(f"{tmp}/branch.onnx").graph
    rename = dict(zip(in_names, sources, strict=True))

    def name(t: str) -> str:
        return rename.get(t) or (f"{tag}/{t}" if t else t)

    for node in sub.node:
        node.name = f"{tag}/{node.name or node.output[0]}"
        node.input[:] = [name(t) for t in node.input]
        node.output[:] = [name(t) for t in node.output]
    for init in sub.initializer:
        init.name = name(init.name)
    for node in g.node:
        node.output[:] = ["va_raw" if o == "va" else o for o in node.output]
        node.input[:] = ["va_raw" if i == "va" else i for i in node.input]
    g.initializer.extend(list(sub.initializer) + [numpy_helper.from_array(np.array([0], np.int64), f"{tag}/s0"),
                                                  numpy_helper.from_array(np.array([1], np.int64), f"{tag}/s1")])
    g.node.extend(list(sub.node) + [
        helper.make_node("Slice", ["va_raw", f"{tag}/s0", f"{tag}/s1", f"{tag}/s1"], [f"{tag}/valence"], name=f"{tag}/valence"),
        helper.make_node("Concat", [f"{tag}/valence", f"{tag}/arousal"], ["va"], name=f"{tag}/va", axis=1),
    ])
    onnx.checker.check_model(proto, full_check=True)
    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    got = np.asarray(session.run(["va"], {"image": example.numpy()})[0])[:, 1]
    diff = float(np.max(np.abs(got - expected)))
    if diff > 1e-4:
        raise ModelError(f"{path}: the arousal branch differs from torch by {diff:.3g}")
    onnx.save(proto, str(path))
    return {"max_abs_diff": diff, "flops": flops(branch, *(t[:1] for t in inputs))}
