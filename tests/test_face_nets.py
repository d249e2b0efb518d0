"""The face networks: the warm start reads an exported student back (folded BatchNorms included) and the
v2 student's shapes are the ones ONNX Runtime's fused NCHWc kernels take."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")


def _randomise_batch_norms(model: torch.nn.Module, seed: int) -> None:
    """Non-trivial BatchNorm statistics and affine terms, so that folding them into the convolutions matters."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                n = m.num_features
                m.weight.copy_(torch.rand(n, generator=g) + 0.5)
                m.bias.copy_(torch.randn(n, generator=g) * 0.1)
                m.running_mean.copy_(torch.randn(n, generator=g) * 0.1)  # type: ignore[union-attr]
                m.running_var.copy_(torch.rand(n, generator=g) + 0.5)  # type: ignore[union-attr]


def test_module_path_reads_torch_scope_names() -> None:
    from edge.zoo.face_nets import module_path

    assert module_path("/blocks/blocks.0/main/main.0/main.0.1/Conv") == "blocks.0.main.0.1"
    assert module_path("/blocks/blocks.2/main.2/main.2.1/Conv") == "blocks.2.main.2.1"  # a submodule called alone
    assert module_path("/stem/stem.3/Conv") == "stem.3"
    assert module_path("/student/stem/stem.0/Conv") == "stem.0"


def test_warm_start_reproduces_an_exported_mirror_averaged_student_in_a_wider_one(tmp_path: Path) -> None:
    from edge.zoo.common import export_onnx
    from edge.zoo.face_nets import FaceStudent, MirrorAverage, init_from_onnx

    torch.manual_seed(0)
    old = FaceStudent((16, 32, 64, 126), shortcut_bn=True, pool_early=False)
    _randomise_batch_norms(old, 1)
    x = torch.rand(6, 1, 48, 48) * 2 - 1
    export_onnx(MirrorAverage(old).eval(), x, tmp_path / "v1.onnx", "face", ["logits", "embedding"])
    import onnxruntime as ort

    want = ort.InferenceSession(str(tmp_path / "v1.onnx"), providers=["CPUExecutionProvider"]).run(
        ["logits", "embedding"], {"face": x.numpy()})

    new = FaceStudent((16, 32, 64, 128), pool_early=False)  # two more channels, shortcuts without BatchNorm
    copied = init_from_onnx(new, tmp_path / "v1.onnx", torch.rand(64, 1, 48, 48) * 2 - 1)
    assert "head.weight" in copied and "blocks.2.shortcut.0.bias" in copied
    with torch.no_grad():
        logits, embedding = MirrorAverage(new.eval())(x)
    np.testing.assert_allclose(logits.numpy(), want[0], atol=1e-4)
    np.testing.assert_allclose(embedding[:, :126].numpy(), want[1], atol=1e-4)
    assert torch.all(new.head.weight[:, 126:] == 0)  # the new channels start silent


def test_warm_start_refuses_a_file_wider_than_the_model(tmp_path: Path) -> None:
    from edge.errors import ModelError
    from edge.zoo.common import export_onnx
    from edge.zoo.face_nets import FaceStudent, init_from_onnx

    x = torch.zeros(2, 1, 48, 48)
    export_onnx(FaceStudent((16, 32, 64, 128)).eval(), x, tmp_path / "wide.onnx", "face", ["logits", "embedding"])
    with pytest.raises(ModelError, match="larger than the model's"):
        init_from_onnx(FaceStudent((16, 32, 64, 112)), tmp_path / "wide.onnx", x)


def test_the_default_student_fits_the_cap_and_the_vector_width() -> None:
    from edge.zoo.common import count_parameters
    from edge.zoo.face import MAX_PARAMETERS, RECIPE, student

    model = student(RECIPE)
    assert count_parameters(model) <= MAX_PARAMETERS
    for m in model.modules():
        if isinstance(m, torch.nn.Conv2d) and m.out_channels > 1:
            assert m.out_channels % 16 == 0 and (m.in_channels % 16 == 0 or m.in_channels == 1), m
