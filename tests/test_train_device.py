"""Device and precision: parsing and validation, CUDA-side logic with CUDA patched in, bf16/fp16 autocast steps on
the CPU, channels-last, torch.compile, teacher in inference mode, and the model coming back on the CPU in fp32."""
from unittest import mock

import pytest
import torch
from torch import nn

from edgekd.config import ConfigError, parse_recipe
from edgekd.errors import EdgeKDError
from edgekd.train import TrainConfig, train
from edgekd.train.device import (Precision, back_to_cpu_fp32, cpu_bf16_support, device_problem, resolve_device,
                                 to_cpu, to_device)


def _net(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.AdaptiveAvgPool2d(2),
                         nn.Flatten(), nn.Linear(16, 10))


@pytest.fixture(scope="module")
def data(digits):
    return digits.x_train[:128], digits.y_train[:128]


# ------------------------------------------------------------------------------------------ parsing, validation

@pytest.mark.parametrize("value", ["auto", "cpu", "cuda", "cuda:0", "cuda:12"])
def test_valid_device_settings(value):
    assert device_problem(value) is None


@pytest.mark.parametrize("value", ["gpu", "cuda:", "cuda:x", "CPU", "mps", 0, None, "cuda:0 "])
def test_invalid_device_settings_say_what_is_allowed(value):
    assert "allowed: auto, cpu, cuda, cuda:N" in device_problem(value, "distill.train.device")


def test_recipe_with_bad_device_and_precision_fails_at_load_listing_both():
    with pytest.raises(ConfigError) as e:
        parse_recipe({"distill": {"train": {"device": "gpu", "precision": "bf61"}},
                      "teacher": {"train": {"device": "cuda:a"}}})
    text = str(e.value)
    assert "distill.train.device: 'gpu' is not a device; allowed: auto, cpu, cuda, cuda:N" in text
    assert "teacher.train.device: 'cuda:a' is not a device" in text
    assert "distill.train.precision: 'bf61' is not allowed; did you mean 'bf16'?" in text


def test_recipe_accepts_device_precision_channels_last_compile():
    r = parse_recipe({"distill": {"train": {"device": "cuda:1", "precision": "bf16", "channels_last": True,
                                            "compile": True}}})
    t = r.distill.train
    assert (t.device, t.precision, t.channels_last, t.compile) == ("cuda:1", "bf16", True, True)
    assert r.teacher.train.device == "auto" and r.teacher.train.precision == "fp32"


def test_python_api_train_config_is_validated_too(data):
    with pytest.raises(EdgeKDError, match="train.precision: 'half' is not a precision; allowed: fp32, bf16, fp16"):
        train(_net(), *data, TrainConfig(epochs=1, precision="half"), progress=False)
    with pytest.raises(EdgeKDError, match="train.device: 'tpu' is not a device"):
        train(_net(), *data, TrainConfig(epochs=1, device="tpu"), progress=False)


# ------------------------------------------------------------------------------ device resolution (CUDA patched)

def test_auto_is_cpu_without_cuda_and_cuda_asked_without_it_fails_in_one_line():
    with mock.patch("torch.cuda.is_available", return_value=False):
        assert resolve_device("auto") == torch.device("cpu")
        assert resolve_device("cpu") == torch.device("cpu")
        with pytest.raises(EdgeKDError, match="device 'cuda': this machine has no CUDA GPU.*set device: auto or cpu"):
            resolve_device("cuda")
        with pytest.raises(EdgeKDError, match="device 'cuda:1': this machine has no CUDA GPU"):
            resolve_device("cuda:1")


def test_cuda_follows_local_rank_under_torchrun_and_checks_the_index(monkeypatch):
    monkeypatch.setenv("LOCAL_RANK", "1")
    with mock.patch("torch.cuda.is_available", return_value=True), \
            mock.patch("torch.cuda.device_count", return_value=2):
        assert resolve_device("auto") == torch.device("cuda", 1)
        assert resolve_device("cuda") == torch.device("cuda", 1)
        assert resolve_device("cuda:0") == torch.device("cuda", 0)
        with pytest.raises(EdgeKDError, match="needs GPU 3, this machine has 2"):
            resolve_device("cuda:3")
    monkeypatch.setenv("LOCAL_RANK", "2")
    with mock.patch("torch.cuda.is_available", return_value=True), \
            mock.patch("torch.cuda.device_count", return_value=2):
        with pytest.raises(EdgeKDError, match="needs GPU 2, this machine has 2"):
            resolve_device("cuda")


def test_grad_scaler_only_for_fp16_and_teacher_in_half_precision_on_cuda():
    cpu, cuda = torch.device("cpu"), torch.device("cuda", 0)
    assert not Precision("fp32", cpu).grad_scaler().is_enabled()
    assert not Precision("bf16", cpu).grad_scaler().is_enabled()
    assert Precision("fp16", cpu).grad_scaler().is_enabled()
    assert Precision("fp32", cpu).teacher_dtype() is None
    assert Precision("bf16", cpu).teacher_dtype() is torch.bfloat16
    assert Precision("bf16", cuda).teacher_dtype() is torch.bfloat16
    assert Precision("fp16", cuda).teacher_dtype() is torch.float16
    with mock.patch("torch.cuda.is_bf16_supported", return_value=True):
        assert Precision("fp32", cuda).teacher_dtype() is torch.bfloat16  # the teacher never trains: half is safe
    with mock.patch("torch.cuda.is_bf16_supported", return_value=False):
        assert Precision("fp32", cuda).teacher_dtype() is torch.float16
    assert isinstance(Precision("fp32", cpu).autocast(), type(__import__("contextlib").nullcontext()))


def test_batches_go_to_cuda_pinned_and_non_blocking():
    batch = mock.MagicMock()
    batch.is_pinned.return_value = False
    pinned = batch.pin_memory.return_value
    pinned.to.return_value.dim.return_value = 4
    out = to_device(batch, torch.device("cuda", 0), channels_last=True)
    batch.pin_memory.assert_called_once_with()
    pinned.to.assert_called_once_with(torch.device("cuda", 0), non_blocking=True)
    assert out is pinned.to.return_value.contiguous.return_value
    x = torch.randn(2, 1, 4, 4)
    assert to_device(x, torch.device("cpu")) is x  # nothing to do on the CPU


# ------------------------------------------------------------------------------------ training on this CPU

def _dtype_probe(model: nn.Module) -> list[torch.dtype]:
    seen: list[torch.dtype] = []
    model[0].register_forward_hook(lambda m, i, o: seen.append(o.dtype) if m.training else None)
    return seen


def test_bf16_autocast_training_step_on_cpu(data):
    model = _net()
    seen = _dtype_probe(model)
    result = train(model, *data, TrainConfig(epochs=1, lr=1e-2, precision="bf16", device="cpu"), batch_size=32,
                   progress=False)
    assert seen and set(seen) == {torch.bfloat16}  # the convolution really ran in bf16
    assert all(p.dtype == torch.float32 and p.device.type == "cpu" for p in model.parameters())
    assert result.steps == 4 and all(torch.isfinite(torch.tensor(c["loss"])) for c in result.curve)
    fp32 = _net()
    train(fp32, *data, TrainConfig(epochs=1, lr=1e-2, device="cpu"), batch_size=32, progress=False)
    diff = max((a - b).abs().max().item() for a, b in zip(model.parameters(), fp32.parameters()))
    assert 0 < diff < 0.05  # the same training, in another precision


def test_fp16_with_grad_scaler_and_channels_last_on_cpu(data):
    model = _net()
    seen = _dtype_probe(model)
    result = train(model, *data, TrainConfig(epochs=1, lr=1e-2, precision="fp16", channels_last=True, grad_clip=1.0),
                   batch_size=32, progress=False, x_test=data[0][:64], y_test=data[1][:64])
    assert set(seen) == {torch.float16}
    assert result.history[0]["test_accuracy"] >= 0
    conv = model[0].weight
    assert conv.dtype == torch.float32 and conv.is_contiguous()  # back in the default memory format


def test_back_to_cpu_fp32_undoes_half_weights():
    model = _net().to(torch.bfloat16).to(memory_format=torch.channels_last)
    back_to_cpu_fp32(model, channels_last=True)
    assert all(t.dtype == torch.float32 for t in list(model.parameters()) + [model[1].running_mean])
    assert model[0].weight.is_contiguous()
    assert model[1].num_batches_tracked.dtype == torch.long  # integer buffers keep their type


@pytest.mark.slow  # inductor compiles forward and backward: ~30 s on 2 cores
def test_compile_runs_on_cpu_or_says_in_one_line_why_not(data):
    model = _net()
    try:
        result = train(model, *data, TrainConfig(epochs=0.25, lr=1e-2, compile=True), batch_size=32,
                       progress=False)
    except EdgeKDError as e:
        assert str(e).startswith("train.compile: torch.compile") and "set compile: false" in str(e)
        assert "\n" not in str(e)
        return
    assert result.steps == 1
    assert not any(k.startswith("_orig_mod") for k in model.state_dict())  # the plain module was trained


def test_compile_failure_at_the_first_call_is_one_line(data):
    from torch._dynamo.exc import BackendCompilerFailed

    def broken_compile(module):
        def call(*args, **kwargs):
            raise BackendCompilerFailed(lambda *a: None, RuntimeError("C++ compile error\nno compiler found"), None)
        return call

    with mock.patch("torch.compile", broken_compile):
        with pytest.raises(EdgeKDError) as e:
            train(_net(), *data, TrainConfig(epochs=0.25, compile=True), batch_size=32, progress=False)
    assert str(e.value).startswith("train.compile: torch.compile failed on this model/platform")
    assert str(e.value).endswith("set compile: false") and "\n" not in str(e.value)


def test_checkpoint_of_a_half_precision_model_loads_on_cpu_fp32(tmp_path, data):
    from edgekd.train import load_checkpoint, plain_state_dict, restore_state_dict, save_checkpoint

    half = _net(1).to(torch.bfloat16)
    save_checkpoint(to_cpu({"model": plain_state_dict(half)}), tmp_path / "ck.pt")
    state = load_checkpoint(tmp_path / "ck.pt")
    fp32 = _net(2)
    fp32.load_state_dict(restore_state_dict(state["model"]))
    assert fp32[0].weight.dtype == torch.float32
    assert torch.equal(fp32[0].weight, half[0].weight.float())


def test_bf16_run_checkpoints_cpu_tensors_and_resumes_bit_exactly(tmp_path, data):
    cfg = TrainConfig(epochs=2, lr=1e-2, precision="bf16", checkpoint_every=3)
    full = _net()
    train(full, *data, cfg, batch_size=32, progress=False, seed=3)
    ck = tmp_path / "run.pt"
    part = _net()
    train(part, *data, cfg, batch_size=32, progress=False, seed=3, checkpoint=ck, stop_after_steps=7)
    state = torch.load(ck, weights_only=True)
    tensors = [t for t in _walk(state) if isinstance(t, torch.Tensor)]
    assert tensors and all(t.device.type == "cpu" for t in tensors)
    assert "scaler" in state and state["step"] == 6  # saved mid-way through the second epoch
    resumed = _net(9)
    res = train(resumed, *data, cfg, batch_size=32, progress=False, seed=3, checkpoint=ck)
    assert res.resumed_from_step == 6
    for a, b in zip(full.state_dict().values(), resumed.state_dict().values()):
        assert torch.equal(a, b)


def _walk(obj):
    if isinstance(obj, dict):
        for v in obj.values():
            yield from _walk(v)
    elif isinstance(obj, (list, tuple)):
        for v in obj:
            yield from _walk(v)
    else:
        yield obj


# --------------------------------------------------------------------------------------------------- teacher

def test_teacher_runs_in_inference_mode_and_its_logits_can_be_used_by_autograd():
    from edgekd.distill import TorchTeacher

    teacher = TorchTeacher(_net(4))
    teacher.place(torch.device("cpu"), torch.bfloat16)
    seen = []
    teacher.module[0].register_forward_hook(lambda m, i, o: seen.append((o.dtype, o.is_inference())))
    x = torch.randn(3, 1, 8, 8)
    z = teacher.logits(x)
    assert seen == [(torch.bfloat16, True)]
    assert z.dtype == torch.float32 and not z.is_inference()
    student = nn.Linear(64, 10)
    s = student(x.flatten(1))
    loss = torch.nn.functional.kl_div(s.log_softmax(-1), z.log_softmax(-1), log_target=True, reduction="batchmean")
    loss.backward()  # an inference tensor saved for backward would raise here
    assert student.weight.grad is not None
    before = teacher.fingerprint()
    teacher.place(torch.device("cpu"), None)
    assert teacher.fingerprint() == before and teacher.module[0].weight.dtype == torch.float32


def test_kd_with_online_teacher_under_bf16(data):
    from edgekd.distill import TorchTeacher, build_objective
    from edgekd.train import TeacherSignal

    objective = build_objective([{"name": "kd_soft", "weight": 0.5, "temperature": 2.0},
                                 {"name": "ce", "weight": 0.5}])
    teacher = TorchTeacher(_net(5))
    result = train(_net(), *data, TrainConfig(epochs=1, lr=1e-2, precision="bf16"), objective=objective,
                   teacher=TeacherSignal(teacher=teacher), batch_size=32, progress=False)
    assert result.steps == 4 and teacher.dtype is None  # placed back: fp32 on the CPU after training
    assert set(result.history[0]["parts"]) >= {"kd_soft", "ce"}


def test_cpu_bf16_support_is_read_not_assumed():
    info = cpu_bf16_support()
    assert set(info) == {"avx512_bf16", "amx_bf16", "avx512f", "avx2", "torch_cpu_capability"}
    assert isinstance(info["torch_cpu_capability"], str)


def test_qat_refuses_half_precision_at_load_and_in_python(data):
    with pytest.raises(ConfigError, match="quantize.train.precision: QAT trains in fp32"):
        parse_recipe({"quantize": {"enabled": True, "method": "qat", "train": {"precision": "bf16"}}})
    from edgekd.quant import qat_finetune

    with pytest.raises(EdgeKDError, match="QAT trains in fp32 .*got precision 'fp16'"):
        qat_finetune(_net(), (data[0][:2],), scheme="litert_int8", train_config=TrainConfig(precision="fp16"),
                     x=data[0], y=data[1], progress=False)


def test_qat_trains_channels_last_and_comes_back_to_cpu(data):
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).parent))
    from quant_fixtures import TinyNet, separable_task
    from edgekd.quant import qat_finetune

    x, y = separable_task(128, size=8)
    torch.manual_seed(0)
    gm, result = qat_finetune(TinyNet(), (x[:2],), scheme="litert_int8",
                              train_config=TrainConfig(epochs=1, lr=1e-3, channels_last=True), x=x, y=y,
                              teacher="self", batch_size=64, progress=False)
    assert result.steps == 2
    assert all(t.device.type == "cpu" for t in list(gm.parameters()) + list(gm.buffers()))


def test_where_training_runs_is_left_out_of_stage_fingerprints():
    from edgekd.pipeline import placement_free

    base = parse_recipe({"distill": {"train": {"epochs": 2}}, "teacher": {"train": {"epochs": 3}}}).to_dict()
    moved = parse_recipe({"distill": {"train": {"epochs": 2, "device": "cuda:1", "channels_last": True,
                                                "compile": True}},
                          "teacher": {"train": {"epochs": 3, "device": "cpu"}}}).to_dict()
    sections = ("teacher", "distill", "quantize")
    assert placement_free({s: base[s] for s in sections}) == placement_free({s: moved[s] for s in sections})
    bf16 = parse_recipe({"distill": {"train": {"epochs": 2, "precision": "bf16"}}}).to_dict()
    assert placement_free({"distill": bf16["distill"]}) != placement_free({"distill": base["distill"]})
    assert "precision" not in placement_free({"distill": base["distill"]})["distill"]["train"]  # old runs' keys


def test_to_cpu_keeps_containers_and_state_dict_metadata():
    from collections import OrderedDict, defaultdict, namedtuple

    sd = _net().state_dict()
    moved = to_cpu({"sd": sd, "d": defaultdict(list, a=[torch.ones(1)]), "t": (torch.zeros(1), 2),
                    "n": namedtuple("P", "x y")(torch.ones(1), "k")})
    assert isinstance(moved["sd"], OrderedDict) and moved["sd"]._metadata == sd._metadata
    assert torch.equal(moved["d"]["a"][0], torch.ones(1)) and moved["t"][1] == 2 and moved["n"].y == "k"


def test_a_run_asking_for_a_missing_gpu_stops_before_anything_trains(tmp_path):
    import yaml

    from edgekd.pipeline import run

    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump({"name": "r", "data": {"dataset": "digits"},
                                      "quantize": {"train": {"device": "cuda:0"}}}))
    with mock.patch("torch.cuda.is_available", return_value=False):
        with pytest.raises(EdgeKDError, match=r"^quantize.train.device 'cuda:0': this machine has no CUDA GPU"):
            run(recipe, run_dir=tmp_path / "run", progress=False, log=lambda m: None)
    assert not (tmp_path / "run").exists()


# ------------------------------------------------------------------------- process group from torchrun's env

def test_process_group_backend_follows_the_machine(monkeypatch):
    from edgekd.train import distributed

    for key in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(key, raising=False)
    assert distributed.init_from_env() is False  # not launched by torchrun: nothing to join
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    with pytest.raises(EdgeKDError, match="MASTER_ADDR, MASTER_PORT, LOCAL_RANK is not set: launch with torchrun"):
        distributed.init_from_env()
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", "29500")
    calls = []
    with mock.patch("torch.distributed.init_process_group", lambda backend, **kw: calls.append(backend)), \
            mock.patch("torch.cuda.is_available", return_value=False):
        assert distributed.init_from_env() is True
    with mock.patch("torch.distributed.init_process_group", lambda backend, **kw: calls.append(backend)), \
            mock.patch("torch.cuda.is_available", return_value=True), \
            mock.patch("torch.cuda.set_device") as set_device:
        distributed.init_from_env()
    assert calls == ["gloo", "cpu:gloo,cuda:nccl"]
    set_device.assert_called_once_with(1)  # each process on the GPU of its LOCAL_RANK
    with mock.patch("torch.distributed.init_process_group", side_effect=RuntimeError("connect refused\nmore")), \
            mock.patch("torch.cuda.is_available", return_value=False):
        with pytest.raises(EdgeKDError, match=r"^cannot join the torchrun process group \(gloo\): connect refused$"):
            distributed.init_from_env()


def test_outside_a_process_group_everything_is_local():
    from edgekd.train import distributed

    assert distributed.world_and_rank() == (1, 0) and distributed.is_main_process()
    assert distributed.all_reduce_sums({"a": 1.0}) == {"a": 1.0}
    assert distributed.broadcast_object("x") == "x"
    with distributed.rank_zero_first() as main:
        assert main
    with distributed.local_only():
        assert not distributed.is_distributed()
