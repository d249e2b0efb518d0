"""The face networks: the student (an Xception-style CNN), its mirror-averaging wrapper, and the ResNet teacher.

Also ``init_from_onnx``: load an exported student (whose Conv+BatchNorm pairs torch folded into one Conv
with a bias) back into a student for a warm start, even one a few channels wider.

Why the student's shapes are what they are (ONNX Runtime on a CPU, batch 1): every convolution's channel
count is a multiple of 16, so ONNX Runtime's NCHWc layout (blocks of 8 channels on AVX2, 16 on AVX-512)
covers the whole graph and each convolution runs as one fused kernel (Conv+BN folded, ReLU or the residual
Add fused in); a count like 126 drops the last block back to plain NCHW kernels with reorders around them.
Shortcuts are a 1x1 convolution with a bias (no BatchNorm), which is what the exported graph holds anyway.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from edge.errors import ModelError

STUDENT_WIDTHS = (16, 32, 64, 128)


class SeparableConv(nn.Sequential):
    """Depthwise 3x3 then pointwise 1x1 convolution, each followed by batch norm."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__(
            nn.Conv2d(cin, cin, 3, padding=1, groups=cin, bias=False),
            nn.Conv2d(cin, cout, 1, bias=False),
            nn.BatchNorm2d(cout),
        )


class XceptionBlock(nn.Module):
    """Two separable convolutions, then max-pool /2 (or no pooling), plus a 1x1 (or identity) shortcut.

    ``shortcut_bn``: BatchNorm after the 1x1 shortcut (the v1 student); without it the shortcut convolution
    has a bias, the same function after export for fewer parameters. ``pool_early``: pool between the two
    separable convolutions, so the second (the costlier: cout x cout) runs on a quarter of the pixels, and
    the residual Add and ReLU follow a convolution, where ONNX Runtime fuses them into it.
    """

    def __init__(self, cin: int, cout: int, downsample: bool = True, shortcut_bn: bool = False,
                 pool_early: bool = False) -> None:
        super().__init__()
        self.pool_early = pool_early
        self.main = nn.Sequential(SeparableConv(cin, cout), nn.ReLU(inplace=True), SeparableConv(cout, cout))
        self.pool: nn.Module = nn.MaxPool2d(3, stride=2, padding=1) if downsample else nn.Identity()
        if downsample or cin != cout:
            stride = 2 if downsample else 1
            self.shortcut: nn.Module = nn.Sequential(
                nn.Conv2d(cin, cout, 1, stride=stride, bias=False), nn.BatchNorm2d(cout)
            ) if shortcut_bn else nn.Sequential(nn.Conv2d(cin, cout, 1, stride=stride))
        else:
            self.shortcut = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.pool_early:
            y = self.main[2](self.pool(self.main[1](self.main[0](x))))
        else:
            y = self.pool(self.main(x))
        return F.relu(y + self.shortcut(x))


class PooledHead(nn.Module):
    """What the student and the teacher share after their own ``stem`` and ``blocks``: the global average
    pool is the embedding (what OOD statistics and adaptation read), then dropout and a linear head."""

    stem: nn.Module
    blocks: nn.Module

    def _init_head(self, width: int, n_classes: int, dropout: float) -> None:
        self.embedding_size = width
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(width, n_classes)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        embedding = self.blocks(self.stem(x)).mean(dim=(2, 3))
        return self.head(self.dropout(embedding)), embedding


class FaceStudent(PooledHead):
    """Xception-style CNN for 48x48 gray faces: returns (logits, embedding).

    A two-convolution stem halves the resolution early (the 48x48 layers dominate CPU time), then
    Xception blocks widen and halve it again; ``extra`` identity blocks run at 12x12, where they are cheap.
    """

    def __init__(self, widths: tuple[int, ...] = STUDENT_WIDTHS, extra: int = 1, n_classes: int = 7,
                 dropout: float = 0.2, shortcut_bn: bool = False, pool_early: bool = True,
                 separable_stem: bool = False) -> None:
        super().__init__()
        down: list[nn.Module] = [
            nn.Conv2d(widths[0], widths[0], 3, stride=2, padding=1, groups=widths[0], bias=False),
            nn.Conv2d(widths[0], widths[1], 1, bias=False),
        ] if separable_stem else [nn.Conv2d(widths[0], widths[1], 3, stride=2, padding=1, bias=False)]
        self.stem = nn.Sequential(
            nn.Conv2d(1, widths[0], 3, padding=1, bias=False), nn.BatchNorm2d(widths[0]), nn.ReLU(inplace=True),
            *down, nn.BatchNorm2d(widths[1]), nn.ReLU(inplace=True),
        )
        blocks: list[nn.Module] = []
        for i, (cin, cout) in enumerate(zip(widths[1:-1], widths[2:], strict=True)):
            blocks.append(XceptionBlock(cin, cout, shortcut_bn=shortcut_bn, pool_early=pool_early))
            if i == 0:
                blocks += [XceptionBlock(cout, cout, downsample=False) for _ in range(extra)]
        self.blocks = nn.Sequential(*blocks)
        self._init_head(widths[-1], n_classes, dropout)


class MirrorAverage(nn.Module):
    """The v1 graph: the student's embedding averaged over the face and its mirror image, then its head.

    Faces are left-right symmetric in meaning, so averaging both views gains about a point, for twice the
    compute. The v2 student is distilled from this average instead and runs one pass (recipe
    ``mirror_average`` false). The head is linear, so ``logits = head(embedding)`` still holds.
    """

    def __init__(self, student: FaceStudent) -> None:
        super().__init__()
        self.student = student
        self.embedding_size = student.embedding_size

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        both = torch.cat([x, torch.flip(x, dims=[3])], dim=0)
        features = self.student.blocks(self.student.stem(both)).mean(dim=(2, 3))
        embedding = 0.5 * (features[: x.shape[0]] + features[x.shape[0] :])
        return self.student.head(embedding), embedding


class ResidualBlock(nn.Module):
    """Two 3x3 convolutions with batch norm (ResNet's basic block), the first one striding when asked."""

    def __init__(self, cin: int, cout: int, stride: int = 1) -> None:
        super().__init__()
        self.main = nn.Sequential(
            nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
            nn.Conv2d(cout, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout),
        )
        self.shortcut: nn.Module = nn.Identity() if stride == 1 and cin == cout else nn.Sequential(
            nn.Conv2d(cin, cout, 1, stride=stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.main(x) + self.shortcut(x))


class FaceTeacher(PooledHead):
    """A narrow ResNet-18 for 48x48 gray faces (about 2.8M parameters): the teacher the student is distilled from.

    It is trained here (``emoedge train face-teacher``, minutes on a GPU) because the mini-Xception teachers
    in shared/ reach only 0.61 on FER2013 validation, which caps what a student can learn from them.
    """

    def __init__(self, widths: tuple[int, ...] = (32, 64, 128, 256), blocks: int = 2, n_classes: int = 7,
                 dropout: float = 0.3) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, widths[0], 3, padding=1, bias=False), nn.BatchNorm2d(widths[0]),
                                  nn.ReLU(inplace=True))
        layers: list[nn.Module] = []
        cin = widths[0]
        for i, width in enumerate(widths):
            for j in range(blocks):
                layers.append(ResidualBlock(cin, width, stride=2 if i > 0 and j == 0 else 1))
                cin = width
        self.blocks = nn.Sequential(*layers)
        self._init_head(widths[-1], n_classes, dropout)


def init_from_onnx(model: FaceStudent, onnx_path: Path, images: torch.Tensor, batch: int = 256) -> list[str]:
    """Warm-start ``model`` from an exported student (plain or mirror-averaged) of the same layout.

    torch's export folds each BatchNorm into the convolution before it (weights scaled, a bias added), so
    the ONNX file has Conv weights and biases named after the torch modules (``/blocks/blocks.0/...``).
    Each is copied into the leading channels of the model's convolution; a folded bias goes to the shortcut
    convolution's own bias or to the BatchNorm that follows the convolution. The BatchNorms are then set
    so that the warm model computes what the file computes, in eval mode and (to within batch statistics)
    in training mode: their running statistics are measured on ``images`` and the affine terms undo them.
    Channels the file lacks (a wider model) keep their random weights and get zero weight in the layers
    that read them, so they start silent. Returns the names of the tensors that were copied.
    """
    import onnx
    from onnx import numpy_helper

    proto = onnx.load(str(onnx_path))
    weights = {t.name: numpy_helper.to_array(t) for t in proto.graph.initializer}
    for node in proto.graph.node:  # the exporter shares equal tensors (e.g. zero biases) through Identity nodes
        if node.op_type == "Identity" and node.input[0] in weights:
            weights[node.output[0]] = weights[node.input[0]]
    modules = dict(model.named_modules())
    params = dict(model.named_parameters())
    copied: list[str] = []
    bn_bias: dict[str, np.ndarray] = {}

    def put(name: str, value: np.ndarray, zero_extra_inputs: bool) -> None:
        target = params[name]
        if any(have > want for have, want in zip(value.shape, target.shape, strict=True)):
            raise ModelError(f"{onnx_path}: {name} is {value.shape}, larger than the model's {tuple(target.shape)}")
        with torch.no_grad():
            if zero_extra_inputs and target.dim() >= 2 and target.shape[1] > value.shape[1]:
                target[:, value.shape[1]:] = 0.0
            target[tuple(slice(0, n) for n in value.shape)] = torch.from_numpy(value.copy())
        copied.append(name)

    for node in proto.graph.node:
        if node.op_type not in ("Conv", "Gemm"):
            continue
        path = "head" if node.op_type == "Gemm" else module_path(node.name)
        if path not in modules:
            raise ModelError(f"{onnx_path}: node {node.name} has no module {path} in the student")
        put(f"{path}.weight", weights[node.input[1]], zero_extra_inputs=True)
        if len(node.input) > 2:
            if f"{path}.bias" in params:
                put(f"{path}.bias", weights[node.input[2]], zero_extra_inputs=False)
            else:
                parent, index = path.rsplit(".", 1)
                bn_bias[f"{parent}.{int(index) + 1}"] = weights[node.input[2]]
    for name, bias in bn_bias.items():
        bn = modules.get(name)
        if not isinstance(bn, nn.BatchNorm2d):
            raise ModelError(f"{onnx_path}: a folded bias has no BatchNorm at {name}")
        with torch.no_grad():
            bn.weight.fill_(1.0)
            bn.bias.zero_()
            bn.bias[: len(bias)] = torch.from_numpy(bias.copy())
            assert bn.running_mean is not None and bn.running_var is not None
            bn.running_mean.zero_()
            bn.running_var.fill_(1.0 - bn.eps)
    _measure_batch_norms(model, [m for n, m in modules.items() if n in bn_bias], images, batch)
    return copied


def module_path(node_name: str) -> str:
    """torch's ONNX node name -> the module's dotted path: ``/blocks/blocks.0/main/main.0/main.0.1/Conv`` ->
    ``blocks.0.main.0.1`` (each scope repeats its parent attribute's name as a prefix)."""
    parts: list[str] = []
    for scope in node_name.strip("/").split("/")[:-1]:
        if parts and scope.startswith(parts[-1] + "."):
            parts[-1] = scope
        else:
            parts.append(scope)
    return ".".join(parts).removeprefix("student.")


def _measure_batch_norms(model: nn.Module, norms: list[nn.Module], images: torch.Tensor, batch: int) -> None:
    """Set each BatchNorm's running statistics to those of its input on ``images`` (the eval-mode net
    unchanged meanwhile), then its affine terms so that its output stays what it was: x + the folded bias."""
    sums: dict[int, list[torch.Tensor]] = {id(m): [] for m in norms}

    def hook(module: nn.Module, args: tuple[torch.Tensor, ...]) -> None:
        x = args[0].detach()
        sums[id(module)].append(torch.stack([x.mean(dim=(0, 2, 3)), (x * x).mean(dim=(0, 2, 3))]) * len(x))

    handles = [m.register_forward_pre_hook(hook) for m in norms]
    model.eval()
    with torch.no_grad():
        for start in range(0, len(images), batch):
            model(images[start : start + batch])
    for h in handles:
        h.remove()
    with torch.no_grad():
        for m in norms:
            assert isinstance(m, nn.BatchNorm2d) and m.running_mean is not None and m.running_var is not None
            total = torch.stack(sums[id(m)]).sum(dim=0) / len(images)
            mean, var = total[0], (total[1] - total[0] ** 2).clamp_min(1e-6)
            m.weight.copy_(torch.sqrt(var + m.eps))
            m.bias.add_(mean)
            m.running_mean.copy_(mean)
            m.running_var.copy_(var)
