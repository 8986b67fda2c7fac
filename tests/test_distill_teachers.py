"""Teachers: torch, TorchScript, ONNX (same logits as the source model), ensemble weights, load_teacher specs."""
from __future__ import annotations

import time

import pytest
import torch
from torch import nn

from edgekd.distill import (EnsembleTeacher, OnnxTeacher, Teacher, TorchScriptTeacher, TorchTeacher, as_teacher,
                            load_teacher)
from edgekd.errors import EdgeKDError


def tiny_net(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Dropout(0.5),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3))


class Constant(Teacher):
    """A teacher returning fixed logits, for ensemble arithmetic."""

    def __init__(self, logits):
        self.value = torch.tensor(logits)

    def logits(self, x):
        return self.value.expand(len(x), -1)

    def fingerprint(self):
        return str(self.value.tolist())


def test_torch_teacher_eval_no_grad_and_features():
    net = tiny_net().train()
    x = torch.randn(5, 1, 6, 6)
    teacher = TorchTeacher(net)
    z1, z2 = teacher.logits(x), teacher.logits(x)
    assert not z1.requires_grad and torch.equal(z1, z2)      # eval mode: dropout off, BN running stats
    assert net.training                                       # the caller's mode is restored
    net.eval()
    assert torch.equal(teacher.logits(x), z1) and not net.training
    logits, feats = teacher.forward_with_features(x, ["2"])
    assert torch.equal(logits, z1) and feats["2"].shape == (5, 4, 6, 6) and (feats["2"] >= 0).all()
    with pytest.raises(EdgeKDError, match="has no submodule '9'"):
        teacher.forward_with_features(x, ["9"])


def test_torch_teacher_fingerprint_tracks_weights():
    a, b = TorchTeacher(tiny_net(0)), TorchTeacher(tiny_net(0))
    assert a.fingerprint() == b.fingerprint() and len(a.fingerprint()) == 64
    with torch.no_grad():
        b.module[-1].bias[0] += 1e-6
    assert a.fingerprint() != b.fingerprint()


def test_torchscript_teacher(tmp_path):
    net = tiny_net().eval()
    path = tmp_path / "teacher.pt"
    torch.jit.save(torch.jit.script(net), str(path))
    teacher = TorchScriptTeacher(path)
    x = torch.randn(3, 1, 6, 6)
    torch.testing.assert_close(teacher.logits(x), net(x).detach())
    assert not teacher.supports_features
    with pytest.raises(EdgeKDError, match="torchscript teacher gives logits only.*use a torch teacher"):
        teacher.forward_with_features(x, ["2"])
    assert load_teacher({"kind": "torchscript", "path": str(path)}).fingerprint() == teacher.fingerprint()


def test_onnx_teacher_matches_hand_built_graph(tmp_path):
    """Fast default-tier check of OnnxTeacher: a Gemm graph written with onnx.helper vs the same nn.Linear."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    torch.manual_seed(0)
    lin = nn.Linear(4, 3)
    w = numpy_helper.from_array(lin.weight.detach().numpy(), "W")
    b = numpy_helper.from_array(lin.bias.detach().numpy(), "B")
    graph = helper.make_graph([helper.make_node("Gemm", ["x", "W", "B"], ["y"], transB=1)], "lin",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3])], [w, b])
    path = tmp_path / "lin.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), str(path))
    teacher = OnnxTeacher(path)
    x = torch.randn(5, 4)
    torch.testing.assert_close(teacher.logits(x), lin(x).detach(), rtol=1e-6, atol=1e-6)
    with pytest.raises(EdgeKDError, match="a feature loss .* use a torch teacher"):
        teacher.forward_with_features(x, ["0"])


@pytest.mark.export  # the dynamo exporter takes ~6 s here
def test_onnx_teacher_matches_torch_model(tmp_path):
    net = tiny_net().eval()
    x = torch.randn(7, 1, 6, 6)
    path = tmp_path / "teacher.onnx"
    t0 = time.perf_counter()
    torch.onnx.export(net, (x,), str(path), dynamo=True, dynamic_shapes=({0: torch.export.Dim("batch")},),
                      verbose=False)
    export_s = time.perf_counter() - t0
    teacher = load_teacher({"kind": "onnx", "path": str(path)})
    assert isinstance(teacher, OnnxTeacher) and not teacher.supports_features
    expected = net(x).detach()
    torch.testing.assert_close(teacher.logits(x), expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(teacher.logits(x[:2]), expected[:2], rtol=1e-5, atol=1e-5)
    with pytest.raises(EdgeKDError, match="onnx teacher gives logits only, but a feature loss .* needs teacher "
                                          "features \\['features.1'\\]: use a torch teacher"):
        teacher.forward_with_features(x, ["features.1"])
    assert len(teacher.fingerprint()) == 64
    assert export_s < 60
    with pytest.raises(EdgeKDError, match=r"onnx teacher teacher.onnx cannot run on the data's images of shape "
                                          r"3x6x6 \(C x H x W\)"):
        teacher.logits(torch.randn(2, 3, 6, 6))


def test_ensemble_weighted_logit_average():
    a, b = Constant([1.0, 0.0, 3.0]), Constant([5.0, 4.0, -1.0])
    ens = EnsembleTeacher([(a, 1.0), (b, 3.0)])
    z = ens.logits(torch.zeros(2, 1))
    # (1*a + 3*b) / 4
    torch.testing.assert_close(z, torch.tensor([[4.0, 3.0, 0.0]] * 2))
    assert ens.fingerprint() != EnsembleTeacher([(a, 3.0), (b, 1.0)]).fingerprint()
    assert ens.fingerprint() == EnsembleTeacher([(a, 2.0), (b, 6.0)]).fingerprint()   # weights are normalized
    with pytest.raises(EdgeKDError, match=r"member 1 weight must be a finite number > 0, got -1"):
        EnsembleTeacher([(a, 1.0), (b, -1)])
    with pytest.raises(EdgeKDError, match="at least one"):
        EnsembleTeacher([])
    with pytest.raises(EdgeKDError, match="disagree on the logits' shape"):
        EnsembleTeacher([(a, 1.0), (Constant([1.0, 2.0]), 1.0)]).logits(torch.zeros(1, 1))
    with pytest.raises(EdgeKDError, match="ensemble teacher gives logits only"):
        ens.forward_with_features(torch.zeros(1, 1), ["x"])


def test_load_torch_zoo_teacher_with_weight_formats(tmp_path):
    from edgekd.models import build_model

    src = build_model("mlp", num_classes=3, input_size=4, hidden=8)
    sd = src.state_dict()
    x = torch.randn(2, 1, 4, 4)
    spec = {"kind": "torch", "model": "mlp", "kwargs": {"num_classes": 3, "input_size": 4, "hidden": 8}}
    for i, blob in enumerate([sd, {"model": sd, "epoch": 3}, {"state_dict": sd},
                              {f"module.{k}": v for k, v in sd.items()}]):
        path = tmp_path / f"w{i}.pt"
        torch.save(blob, path)
        teacher = load_teacher({**spec, "weights": str(path)})
        torch.testing.assert_close(teacher.logits(x), src(x).detach())
        assert teacher.fingerprint() == TorchTeacher(src).fingerprint()


def test_load_torch_teacher_errors(tmp_path):
    from edgekd.models import build_model

    path = tmp_path / "w.pt"
    torch.save(build_model("mlp", num_classes=5, input_size=4, hidden=8).state_dict(), path)
    spec = {"kind": "torch", "model": "mlp", "kwargs": {"num_classes": 3, "input_size": 4, "hidden": 8},
            "weights": str(path)}
    with pytest.raises(EdgeKDError, match=r"key '3.weight' has shape \(5, 8\) but the model expects \(3, 8\)"):
        load_teacher(spec)
    with pytest.raises(EdgeKDError, match=r"^teacher weights file not found: .*nope.pt$"):
        load_teacher({**spec, "weights": str(tmp_path / "nope.pt")})
    torch.save({"1.weight": torch.zeros(8, 16)}, path)
    with pytest.raises(EdgeKDError, match=r"lack key '1.bias'"):
        load_teacher(spec)
    path.write_bytes(b"not a checkpoint")
    with pytest.raises(EdgeKDError, match=r"cannot read teacher weights"):
        load_teacher(spec)
    with pytest.raises(EdgeKDError, match=r"unknown teacher kind 'onxx'; did you mean 'onnx'\?"):
        load_teacher({"kind": "onxx", "path": "x"})
    with pytest.raises(EdgeKDError, match=r"^onnx teacher file not found: .*missing.onnx$"):
        load_teacher({"kind": "onnx", "path": str(tmp_path / "missing.onnx")})
    with pytest.raises(EdgeKDError, match=r"teacher kind 'torch': missing 'model'"):
        load_teacher({"kind": "torch"})
    with pytest.raises(EdgeKDError, match=r"unknown field\(s\) 'wieghts'"):
        load_teacher({"kind": "torch", "model": "mlp", "wieghts": "x"})
    with pytest.raises(EdgeKDError, match=r"needs 'kind'"):
        load_teacher({"model": "mlp"})


def test_load_import_path_and_ensemble_spec():
    lin = {"kind": "torch", "model": "torch.nn:Linear", "kwargs": {"in_features": 4, "out_features": 3}}
    teacher = load_teacher(lin)
    assert isinstance(teacher, TorchTeacher) and isinstance(teacher.module, nn.Linear)
    ens = load_teacher({"kind": "ensemble", "members": [{**lin, "weight": 1.0}, {**lin, "weight": 3.0}]})
    assert isinstance(ens, EnsembleTeacher) and [w for _, w in ens.members] == [0.25, 0.75]
    x = torch.randn(2, 4)
    expected = 0.25 * ens.members[0][0].logits(x) + 0.75 * ens.members[1][0].logits(x)
    torch.testing.assert_close(ens.logits(x), expected)
    assert isinstance(as_teacher(nn.Linear(2, 2)), TorchTeacher)
    with pytest.raises(EdgeKDError, match="cannot use str as a teacher"):
        as_teacher("teacher.pt")


def _tiny_keras_model(softmax: bool):
    import keras

    keras.utils.set_random_seed(0)
    inputs = keras.Input((6, 5, 3))  # channels-last, H != W != C so a wrong transpose cannot pass
    h = keras.layers.Conv2D(4, 3, padding="same", activation="relu")(inputs)
    h = keras.layers.GlobalAveragePooling2D()(keras.layers.Dense(4)(h))
    out = keras.layers.Dense(3, activation="softmax" if softmax else None)(h)
    return keras.Model(inputs, out)


def test_keras_teacher_file_and_savedmodel_nhwc_cached(tmp_path):
    from edgekd.distill import load_or_build
    from edgekd.distill.teachers import KerasTeacher

    model = _tiny_keras_model(softmax=False)
    model.save(tmp_path / "t.keras")
    x = torch.randn(5, 3, 6, 5)  # the data's NCHW batch
    expected = torch.from_numpy(model(x.permute(0, 2, 3, 1).numpy(), training=False).numpy())
    teacher = load_teacher({"kind": "keras", "path": str(tmp_path / "t.keras")})
    assert isinstance(teacher, KerasTeacher)
    torch.testing.assert_close(teacher.logits(x), expected, rtol=1e-5, atol=1e-5)
    with pytest.raises(EdgeKDError, match=r"expects input \[None, 6, 5, 3\], the data has images of 3x5x6"):
        teacher.logits(torch.randn(2, 3, 5, 6))
    # cached like the ONNX teacher: keyed by the file bytes, reused on the second call
    first = load_or_build(teacher, x, tmp_path / "cache", "pre", progress=False)
    again = load_or_build(load_teacher({"kind": "keras", "path": str(tmp_path / "t.keras")}), x,
                          tmp_path / "cache", "pre", progress=False)
    assert first.path == again.path and len(list((tmp_path / "cache").glob("*.pt"))) == 1
    # a SavedModel folder of a softmax model: probabilities become log-probabilities (same softmax at any T)
    soft = _tiny_keras_model(softmax=True)
    soft.export(str(tmp_path / "saved"))
    saved = load_teacher({"kind": "keras", "path": str(tmp_path / "saved")})
    probs = torch.from_numpy(soft(x.permute(0, 2, 3, 1).numpy(), training=False).numpy())
    torch.testing.assert_close(torch.softmax(saved.logits(x) / 2, -1), torch.softmax(probs.log() / 2, -1),
                               rtol=1e-4, atol=1e-5)
    assert saved.fingerprint() != teacher.fingerprint()
    with pytest.raises(EdgeKDError, match="keras teacher file not found"):
        load_teacher({"kind": "keras", "path": str(tmp_path / "nope.keras")})
    (tmp_path / "junk.keras").write_bytes(b"not a zip")
    with pytest.raises(EdgeKDError, match="cannot load keras teacher"):
        load_teacher({"kind": "keras", "path": str(tmp_path / "junk.keras")})


def test_renormalized_teacher_sees_its_own_normalization(monkeypatch):
    from types import SimpleNamespace

    from edgekd.distill.teachers import RenormalizedTeacher

    seen = {}

    class Probe(Teacher):
        def logits(self, x):
            seen["x"] = x
            return x.flatten(1)[:, :3]

        def fingerprint(self):
            return "probe"

    from edgekd.distill.teachers import TEACHER_KINDS

    monkeypatch.setitem(TEACHER_KINDS._items, "probe", lambda spec: Probe())  # registered for this test only
    data = SimpleNamespace(mean=(100.0, 50.0, 10.0), std=(20.0, 10.0, 5.0), input_shape=(3, 2, 2), num_classes=3,
                           pixel_max=255.0)
    pixels = torch.rand(2, 3, 2, 2) * 255
    x = (pixels - torch.tensor(data.mean).view(1, 3, 1, 1)) / torch.tensor(data.std).view(1, 3, 1, 1)
    teacher = load_teacher({"kind": "probe", "mean": "imagenet", "std": "imagenet"}, data=data)
    assert isinstance(teacher, RenormalizedTeacher)
    teacher.logits(x)
    imagenet = (pixels / 255 - torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)) / torch.tensor(
        [0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    torch.testing.assert_close(seen["x"], imagenet, rtol=1e-4, atol=1e-4)
    raw = load_teacher({"kind": "probe", "mean": [0], "std": [1]}, data=data)
    raw.logits(x)
    torch.testing.assert_close(seen["x"], pixels, rtol=1e-4, atol=1e-3)
    assert raw.fingerprint() != teacher.fingerprint()
    with pytest.raises(EdgeKDError, match="pass the data"):
        load_teacher({"kind": "probe", "mean": [0]})
    with pytest.raises(EdgeKDError, match=r"teacher.std: 2 values for images with 3 channel"):
        load_teacher({"kind": "probe", "std": [1, 2]}, data=data)
