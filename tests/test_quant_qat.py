"""QAT with PT2E: scheme ranges in the graph, phases (frozen observers / BN), checkpoint round-trip, convert."""
import copy

import pytest
import torch
import torch.nn.functional as F

from edgekd.errors import EdgeKDError
from edgekd.quant import (convert_qat, eval_mode, is_quantized, load_qat_state, load_quantized, prepare_qat,
                          qat_state_dict, save_quantized, set_qat_phase, train_mode)
from quant_fixtures import TinyNet, separable_task

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning", "ignore::UserWarning")
torch.set_num_threads(1)


@pytest.fixture(scope="module")
def task():
    x, y = separable_task(256, size=8)
    return x, y


def _fake_quants(gm):
    from torchao.quantization.pt2e import FakeQuantizeBase

    return {n: m for n, m in gm.named_modules() if isinstance(m, FakeQuantizeBase)}


def _steps(gm, x, y, start, n, freeze_obs=None, freeze_bn=None, lr=0.05):
    opt = torch.optim.SGD(gm.parameters(), lr=lr)
    g = torch.Generator().manual_seed(start)
    for step in range(start, start + n):
        train_mode(gm)
        set_qat_phase(gm, step, freeze_obs, freeze_bn)
        i = torch.randint(0, len(x), (32,), generator=g)
        loss = F.cross_entropy(gm(x[i]), y[i])
        opt.zero_grad()
        loss.backward()
        opt.step()


def test_prepare_follows_scheme_and_keeps_the_float_model(task):
    x, y = task
    torch.manual_seed(0)
    model = TinyNet()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    gm = prepare_qat(model, x[:1], "ort_x86_novnni")
    fqs = _fake_quants(gm)
    weight_ranges = {(m.quant_min, m.quant_max) for m in fqs.values() if m.qscheme == torch.per_channel_symmetric}
    act_ranges = {(m.quant_min, m.quant_max) for m in fqs.values() if m.qscheme == torch.per_tensor_affine}
    assert weight_ranges == {(-64, 63)} and act_ranges == {(-128, 127)}
    # 3 convs + linear + the global pool, a depthwise conv of weight 1/(h*w) (avg_pools_as_depthwise_conv)
    assert sum(m.qscheme == torch.per_channel_symmetric for m in fqs.values()) == 5
    _steps(gm, x, y, 0, 3)
    assert gm(x[:5]).shape == (5, 4) and gm(x[:1]).shape == (1, 4)  # dynamic batch
    for k, v in model.state_dict().items():  # QAT trains a copy; the caller's float model is untouched
        assert torch.equal(v, before[k]), k


def test_phases_freeze_observers_and_bn_statistics(task):
    x, y = task
    torch.manual_seed(0)
    gm = prepare_qat(TinyNet(), x[:2], "litert_int8")
    _steps(gm, x, y, 0, 2, freeze_obs=2, freeze_bn=3)
    assert set_qat_phase(gm, 1, 2, 3) == {"observers_frozen": False, "bn_frozen": False}
    bn_means = {k: v.clone() for k, v in gm.state_dict().items() if k.endswith("running_mean")}
    scales = {n: m.scale.clone() for n, m in _fake_quants(gm).items()}
    _steps(gm, x, y, 2, 1, freeze_obs=2, freeze_bn=3)  # step 2: observers frozen, BN still updating
    assert all(torch.equal(m.scale, scales[n]) for n, m in _fake_quants(gm).items())
    changed = {k: v.clone() for k, v in gm.state_dict().items() if k.endswith("running_mean")}
    assert any(not torch.equal(changed[k], bn_means[k]) for k in bn_means)
    _steps(gm, x, y, 3, 2, freeze_obs=2, freeze_bn=3)  # BN frozen from step 3, also across train_mode()
    assert set_qat_phase(gm, 4, 2, 3) == {"observers_frozen": True, "bn_frozen": True}
    after = {k: v for k, v in gm.state_dict().items() if k.endswith("running_mean")}
    assert all(torch.equal(after[k], changed[k]) for k in changed)
    with pytest.raises(ValueError, match="freeze_bn_at must be None or an int >= 0, got -1"):
        set_qat_phase(gm, 0, None, -1)


def test_state_round_trip_into_a_fresh_graph(task):
    x, y = task
    torch.manual_seed(0)
    model = TinyNet()
    gm = prepare_qat(model, x[:2], "ort_x86_novnni")
    _steps(gm, x, y, 0, 4, freeze_obs=3, freeze_bn=3)
    state = qat_state_dict(gm)
    fresh = prepare_qat(model, x[:2], "ort_x86_novnni")
    load_qat_state(fresh, state)
    assert fresh.meta["edgekd_qat_phase"] == {"observers_frozen": True, "bn_frozen": True}
    eval_mode(gm)
    eval_mode(fresh)
    with torch.no_grad():
        assert torch.equal(gm(x[:16]), fresh(x[:16]))
    # Training resumes identically: same next step on both.
    _steps(gm, x, y, 4, 1, 3, 3)
    _steps(fresh, x, y, 4, 1, 3, 3)
    eval_mode(gm)
    eval_mode(fresh)
    with torch.no_grad():
        assert torch.allclose(gm(x[:16]), fresh(x[:16]), atol=1e-6)
    other = prepare_qat(model, x[:2], "litert_int8")
    with pytest.raises(EdgeKDError, match="saved with scheme 'ort_x86_novnni'.*prepared with 'litert_int8'"):
        load_qat_state(other, state)
    with pytest.raises(EdgeKDError, match="must be the dict returned by qat_state_dict"):
        load_qat_state(fresh, {"weights": 1})


@pytest.mark.export
def test_convert_folds_bn_and_save_load_round_trip(task, tmp_path):
    x, y = task
    torch.manual_seed(0)
    gm = prepare_qat(TinyNet(), x[:2], "ort_x86_novnni")
    _steps(gm, x, y, 0, 20)
    eval_mode(gm)
    converted = convert_qat(gm)
    assert is_quantized(converted) and not is_quantized(TinyNet())
    targets = {str(n.target) for n in converted.graph.nodes}
    assert not any("batch_norm" in t for t in targets)
    w_q = [n for n in converted.graph.nodes if "quantize_per_channel" in str(n.target)]
    assert w_q and all(n.args[4:6] == (-64, 63) for n in w_q)
    with torch.no_grad():
        sim, fq = converted(x[:64]), gm(x[:64])
    assert (sim.argmax(1) == fq.argmax(1)).float().mean() >= 0.95  # BN folded: same decisions as QAT graph
    path = save_quantized(converted, x[:1], tmp_path / "student_int8.pt2")
    loaded = load_quantized(path)
    with torch.no_grad():
        assert torch.equal(loaded(x[:7]), converted(x[:7]))
    # Stages pass files: the loaded .pt2 exports as int8 like the in-memory model.
    from edgekd.export import describe_file, export_onnx, export_tflite
    from edgekd.verify import parity

    for exported in (export_onnx(loaded, x[:1], tmp_path / "s.onnx"), export_tflite(loaded, x[:1], tmp_path / "s.tflite")):
        assert describe_file(exported)["precision"] == "int8"
        assert parity(converted, exported, x[:64])["top1_agreement"] >= 0.98
    with pytest.raises(EdgeKDError, match="use a .pt2 path"):
        save_quantized(converted, x[:1], tmp_path / "m.pt")
    with pytest.raises(EdgeKDError, match="quantized model file not found"):
        load_quantized(tmp_path / "missing.pt2")


class DropPath(torch.nn.Module):
    """timm's/torchvision's drop-path (StochasticDepth) in miniature: a random per-sample mask in training."""

    def forward(self, x):
        if not self.training:
            return x
        keep = torch.empty(x.shape[0], 1, device=x.device).bernoulli_(0.8)
        return x * keep / 0.8


def test_qat_graph_has_no_random_drop_path():
    from edgekd.quant import convert_qat, prepare_qat

    model = torch.nn.Sequential(torch.nn.Linear(8, 8), DropPath(), torch.nn.ReLU(), torch.nn.Linear(8, 3))
    x = torch.randn(16, 8)
    gm = prepare_qat(model, (x[:2],), "ort_vnni")
    assert not any("bernoulli" in str(n.target) for n in gm.graph.nodes)
    gm(x)
    converted = convert_qat(gm)
    with torch.no_grad():
        assert torch.equal(converted(x), converted(x))  # deterministic: no mask drawn at inference


class OwnBNNet(torch.nn.Module):
    """conv+BN with torchvision mobilenet_v3's BN settings (eps 1e-3, momentum 0.01), a BN after a ReLU (no conv to
    fuse with) and a dropout of 0.2: the literals torchao's pattern rewrites replaced with 1e-5 / 0.1 / 0.5."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 8, 3, padding=1)
        self.bn = torch.nn.BatchNorm2d(8, eps=1e-3, momentum=0.01)
        self.bn2 = torch.nn.BatchNorm2d(8, eps=1e-3, momentum=0.01)
        self.drop = torch.nn.Dropout(0.2)
        self.fc = torch.nn.Linear(8, 4)

    def forward(self, x):
        x = self.bn2(torch.relu(self.bn(self.conv(x))))
        return self.fc(self.drop(x.mean((2, 3))))


def test_qat_keeps_each_layers_bn_eps_momentum_and_dropout():
    from torchao.quantization.pt2e import disable_fake_quant, disable_observer

    torch.manual_seed(0)
    model = OwnBNNet().eval()
    with torch.no_grad():  # small variances: where eps 1e-3 vs 1e-5 changes the scale up to 10x
        for bn in (model.bn, model.bn2):
            bn.running_var.uniform_(1e-5, 1e-3)
            bn.running_mean.normal_(0, 0.01)
        model.conv.weight.mul_(0.02)
    x = torch.randn(64, 3, 8, 8)
    with torch.no_grad():
        ref = model(x)
    gm = prepare_qat(model, x[:2], "ort_vnni")
    bn_args = [n.args[5:8] for n in gm.graph.nodes if "batch_norm" in str(n.target)]
    assert len(bn_args) == 2 and all(a[1:] == (0.01, 1e-3) for a in bn_args)
    assert [n.args[1] for n in gm.graph.nodes if "dropout" in str(n.target)] == [0.2]
    # The float graph (fake quant off) computes the model it came from, in eval mode ...
    check = copy.deepcopy(gm)
    check.apply(disable_fake_quant)
    check.apply(disable_observer)
    eval_mode(check)
    with torch.no_grad():
        assert torch.allclose(check(x), ref, atol=1e-4 * float(ref.abs().max()))
    # ... and its BN statistics move at the layer's momentum (0.01, not 0.1) in train mode.
    train_mode(check)
    before = check.get_buffer("bn2.running_mean").clone()
    with torch.no_grad():
        check(x)
    eager = OwnBNNet()
    eager.load_state_dict(model.state_dict())
    eager.train()
    with torch.no_grad():
        eager(x)
    assert torch.allclose(check.get_buffer("bn2.running_mean"), eager.bn2.running_mean, atol=1e-5)
    assert not torch.allclose(check.get_buffer("bn2.running_mean"), before)
    # The converted simulation folds BN with the layer's eps: it stays near the float model.
    eval_mode(gm)
    with torch.no_grad():
        gm(x)
    sim = convert_qat(gm)
    with torch.no_grad():
        out = sim(x)
    assert float((out - ref).norm() / ref.norm()) < 0.05


def _quantized_weights(gm):
    """(name, weight / scale + zero point as float64, qmin, qmax) of every constant weight a quantize node reads."""
    from edgekd.quant.quantizer import _attr

    out = []
    for n in gm.graph.nodes:
        if n.op == "call_function" and str(n.target).startswith("quantized_decomposed.quantize_per_channel"):
            w = _attr(gm, n.args[0].target).double()
            scale, zp = (_attr(gm, a.target).double() for a in n.args[1:3])
            axis, qmin, qmax = n.args[3:6]
            shape = [1] * w.dim()
            shape[axis] = -1
            out.append((n.args[0].target, w / scale.reshape(shape) + zp.reshape(shape), qmin, qmax))
    return out


def test_converted_weights_lie_on_their_int8_grid(task, monkeypatch):
    """Converted weights are stored on their int8 grid, also those that QAT moved past the range their frozen
    observer saw: whatever rounding or saturation a converter applies, it reads back the simulation's integer."""
    x, y = task
    torch.manual_seed(0)
    gm = prepare_qat(TinyNet(), x[:2], "ort_vnni")
    _steps(gm, x, y, 0, 2)
    set_qat_phase(gm, 2, freeze_observers_at=2)
    with torch.no_grad():  # weights move after the observers froze, as QAT's later steps and BN updates do
        for name, p in gm.named_parameters():
            if name.endswith("weight") and p.dim() > 1:
                p.mul_(1.08)
    eval_mode(gm)
    converted = convert_qat(gm)
    weights = _quantized_weights(converted)
    assert len(weights) == 5  # 3 convs, the head and the pool's depthwise conv
    for name, q, qmin, qmax in weights:
        assert float((q - q.round()).abs().max()) < 1e-3, name  # on the grid
        assert qmin <= float(q.round().min()) and float(q.round().max()) <= qmax, name  # in the scheme's range
    assert max(float(q.abs().max()) for _, q, _, _ in weights) > 126.5  # the test moved weights to the clamp
    import edgekd.quant.qat as qat_module

    monkeypatch.setattr(qat_module, "snap_weights_to_grid", lambda gm: 0)
    unsnapped = convert_qat(gm)
    assert any(float((q - q.round()).abs().max()) > 0.01 for _, q, _, _ in _quantized_weights(unsnapped))
    with torch.no_grad():  # the simulation computes what it computed before the snap
        assert torch.equal(converted(x[:32]), unsnapped(x[:32]))


def test_source_fns_mark_float_values_only_in_a_training_graph():
    """A training graph's BatchNorm counts batches with an integer `add_` that nothing reads: marking it for
    litert-torch's add annotator made a partition without an output node (IndexError in QAT prepare). Only the
    residual add, a float value that is used, is marked."""
    from edgekd.quant.capture import capture
    from edgekd.quant.quantizer import record_source_fns

    class Block(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.bn = torch.nn.Conv2d(4, 4, 3, padding=1), torch.nn.BatchNorm2d(4)

        def forward(self, x):
            return x + torch.relu(self.bn(self.conv(x)))

    gm = capture(Block().train(), (torch.randn(2, 4, 6, 6),), train=True)
    adds = [n for n in gm.graph.nodes if n.op == "call_function"
            and n.target in (torch.ops.aten.add.Tensor, torch.ops.aten.add_.Tensor)]
    assert len(adds) == 2  # the residual add and BatchNorm's num_batches_tracked += 1
    for n in adds:
        n.meta.pop("source_fn_stack", None)
    record_source_fns(gm)
    marked = [n for n in adds if n.meta.get("source_fn_stack")]
    assert len(marked) == 1 and marked[0].meta["val"].is_floating_point() and marked[0].users
