"""Data-parallel training: two CPU processes on gloo end with identical weights, equal to one process's run on the
same global batches, with metrics reduced over both ranks and one writer; and a 2-process torchrun of the CLI."""
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import yaml
from torch import nn

from edgekd.data import load_dataset
from edgekd.models import build_model
from edgekd.train import TrainConfig, train


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _linear() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 10))


def _worker(rank: int, world: int, port: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        ds = load_dataset("digits")
        x, y = ds.x_train[:256], ds.y_train[:256]
        # 1. a CNN with BatchNorm from different initial weights per rank: DDP must broadcast rank 0's
        torch.manual_seed(rank)
        model = build_model("tiny_cnn", width=8)
        train(model, x, y, TrainConfig(epochs=1, lr=1e-2), seed=0, batch_size=64, progress=False)
        torch.save(model.state_dict(), os.path.join(out, f"cnn{rank}.pt"))
        # 2. a linear model (no batch statistics): compared with one process below; every rank is given a
        # checkpoint path, rank 0 alone writes it; then both resume from it
        cfg = TrainConfig(epochs=2, lr=1e-2, checkpoint_every=5)
        ck = os.path.join(out, "ck.pt") if rank == 0 else os.path.join(out, f"ck_rank{rank}.pt")
        lin = _linear()
        result = train(lin, x, y, cfg, seed=0, batch_size=32, progress=False, x_test=ds.x_test[:200],
                       y_test=ds.y_test[:200])
        part = _linear()
        train(part, x, y, cfg, seed=0, batch_size=32, progress=False, checkpoint=os.path.join(out, "ck.pt"),
              stop_after_steps=12)
        resumed = _linear()
        res2 = train(resumed, x, y, cfg, seed=0, batch_size=32, progress=False, checkpoint=os.path.join(out, "ck.pt"))
        torch.save({"lin": lin.state_dict(), "resumed": resumed.state_dict(), "history": result.history,
                    "curve": result.curve, "resumed_from": res2.resumed_from_step,
                    "wrote_own_checkpoint": os.path.exists(ck) and rank != 0},
                   os.path.join(out, f"lin{rank}.pt"))
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory):
    out = tmp_path_factory.mktemp("ddp")
    mp.spawn(_worker, args=(2, _free_port(), str(out)), nprocs=2, join=True)
    return out


def test_two_gloo_ranks_end_with_identical_weights(two_ranks):
    a = torch.load(two_ranks / "cnn0.pt", weights_only=True)
    b = torch.load(two_ranks / "cnn1.pt", weights_only=True)
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    # and training moved the weights away from rank 0's initialization
    torch.manual_seed(0)
    init = build_model("tiny_cnn", width=8).state_dict()
    assert not torch.equal(init["head.0.weight"], a["head.0.weight"])


def test_two_ranks_equal_one_process_on_the_same_global_batches(two_ranks, digits):
    """Each rank's loss is the mean over its 16 of 32 samples and DDP averages gradients over the 2 ranks, so the
    update is that of the mean over all 32: the same run as one process up to float rounding (no BatchNorm here;
    with BatchNorm each rank normalizes by its own half-batch statistics and the runs differ by design)."""
    r0 = torch.load(two_ranks / "lin0.pt", weights_only=True)
    r1 = torch.load(two_ranks / "lin1.pt", weights_only=True)
    for k in r0["lin"]:
        assert torch.equal(r0["lin"][k], r1["lin"][k])
    assert r0["history"] == r1["history"]  # metrics are reduced over ranks: every rank records the same
    one = _linear()
    single = train(one, digits.x_train[:256], digits.y_train[:256], TrainConfig(epochs=2, lr=1e-2,
                   checkpoint_every=5), seed=0, batch_size=32, progress=False, x_test=digits.x_test[:200],
                   y_test=digits.y_test[:200])
    for k, v in one.state_dict().items():
        torch.testing.assert_close(r0["lin"][k], v, atol=2e-5, rtol=1e-4)
    for two, ref in zip(r0["history"], single.history):
        assert two["loss"] == pytest.approx(ref["loss"], rel=1e-4)
        assert two["train_accuracy"] == pytest.approx(ref["train_accuracy"], abs=1 / 256)
        assert two["test_accuracy"] == ref["test_accuracy"]
    assert [c["step"] for c in r0["curve"]] == [c["step"] for c in single.curve]


def test_one_checkpoint_writer_and_every_rank_resumes_from_it(two_ranks):
    r0 = torch.load(two_ranks / "lin0.pt", weights_only=True)
    r1 = torch.load(two_ranks / "lin1.pt", weights_only=True)
    assert r0["resumed_from"] == r1["resumed_from"] == 10
    assert not r1["wrote_own_checkpoint"]
    for k in r0["lin"]:
        assert torch.equal(r0["resumed"][k], r0["lin"][k]) and torch.equal(r1["resumed"][k], r0["lin"][k])


RECIPE = {
    "name": "ddp", "data": {"dataset": "digits", "batch_size": 32, "subset_train": 256, "subset_test": 100},
    "teacher": {"model": "tiny_cnn", "kwargs": {"width": 4}, "train": {"epochs": 1, "lr": 0.01, "augment": False}},
    "student": {"model": "tiny_cnn", "kwargs": {"width": 4}},
    "distill": {"train": {"epochs": 1, "lr": 0.01}, "cache_teacher": True},
}


def test_torchrun_two_processes_run_the_cli_with_one_writer(tmp_path):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump(RECIPE))
    run_dir = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).parents[1])}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
           "-m", "edgekd", "run", str(recipe), "--run-dir", str(run_dir), "--until", "distill", "--no-progress"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    distill = json.loads((run_dir / "distill" / "stage.json").read_text())
    assert distill["metrics"]["teacher_signal"] == "cache"
    assert len(list((run_dir / "cache").glob("*"))) >= 1
    assert not list(run_dir.glob(".rank*")) and not list(run_dir.glob(".*.staging"))
    for stage in ("teacher", "distill"):
        assert list((run_dir / "tensorboard" / stage).glob("events.out.tfevents.*")), stage
    assert len(list((run_dir / "tensorboard" / "distill").glob("events.out.tfevents.*"))) == 1  # rank 0 only
    assert proc.stdout.count(f"run directory: {run_dir}") == 1  # rank 0 reports, the other rank does not
