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
                 TensorSpec(name="va", shape=["batch", 2], meaning="valence, arousal in [-1, 1]"),
                 TensorSpec(name="embedding", shape=["batch", 256],
                            meaning="hidden layer the heads read (ReLU), mean of the image's and its mirror's")],
        features=FeatureRecipe(recipe="edge.features.scene.scene_input", params={"size": DEFAULT_SIZE}),
        parameters=onnx_parameters(out / "encoder.onnx"), flops=int(exp["flops"]),
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
               + (f" Arousal stack (edge.zoo.scene.arousal_stack, --set stage=arousal): {log['arousal_stack']}."
                  if log.get("arousal_stack") else "")),
        graphs=[GraphSpec.model_validate(g) for g in log.get("graphs", [])],
        explain=log.get("explain", {}),
    )
    previous = out / "card.toml"
    if previous.is_file():  # measurements made since (eval, quantize) stay: they are about the same files
        from edge.card import load_card

        old = load_card(previous)
        card.metrics, card.artifacts, card.confidence, card.ood = old.metrics, old.artifacts, old.confidence, old.ood
    return write_card(card, out)


def add_arousal_stack(path: Path, weight: Any, bias: float) -> None:
    """Rewrite encoder.onnx so that its arousal is clip(w . [softmax(logits), va] + b, -1, 1) (valence unchanged):
    a linear stack fitted on out-of-fold outputs (``edge.zoo.scene.arousal_stack``). Refuses a graph that has one."""
    import numpy as np
    import onnx
    from onnx import helper, numpy_helper

    from edge.errors import ModelError

    proto = onnx.load(str(path))
    g = proto.graph
    if any(n.name.startswith("arousal_stack") for n in g.node):
        raise ModelError(f"{path}: already has an arousal stack (train the encoder again first)")
    for node in g.node:
        node.output[:] = ["va_raw" if o == "va" else o for o in node.output]
        node.input[:] = ["va_raw" if i == "va" else i for i in node.input]
    w = np.asarray(weight, np.float32).reshape(9, 1)
    g.initializer.extend([numpy_helper.from_array(w, "arousal_stack_w"),
                          numpy_helper.from_array(np.array([bias], np.float32), "arousal_stack_b"),
                          numpy_helper.from_array(np.array([-1.0], np.float32)[0], "arousal_stack_lo"),
                          numpy_helper.from_array(np.array([1.0], np.float32)[0], "arousal_stack_hi"),
                          numpy_helper.from_array(np.array([0], np.int64), "arousal_stack_s0"),
                          numpy_helper.from_array(np.array([1], np.int64), "arousal_stack_s1")])
    n = "arousal_stack"
    g.node.extend([
        helper.make_node("Softmax", ["logits"], [f"{n}_p"], name=f"{n}_softmax", axis=1),
        helper.make_node("Concat", [f"{n}_p", "va_raw"], [f"{n}_x"], name=f"{n}_concat", axis=1),
        helper.make_node("MatMul", [f"{n}_x", f"{n}_w"], [f"{n}_m"], name=f"{n}_matmul"),
        helper.make_node("Add", [f"{n}_m", f"{n}_b"], [f"{n}_a"], name=f"{n}_add"),
        helper.make_node("Clip", [f"{n}_a", f"{n}_lo", f"{n}_hi"], [f"{n}_c"], name=f"{n}_clip"),
        helper.make_node("Slice", ["va_raw", f"{n}_s0", f"{n}_s1", f"{n}_s1"], [f"{n}_v"], name=f"{n}_valence"),
        helper.make_node("Concat", [f"{n}_v", f"{n}_c"], ["va"], name=f"{n}_va", axis=1),
    ])
    onnx.checker.check_model(proto, full_check=True)
    onnx.save(proto, str(path))
