"""Data-parallel training: two CPU processes on gloo end with identical weights."""
import os
import socket

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from edgekd.data import load_dataset
from edgekd.train import TrainConfig, train
from edgekd.models import build_model


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world: int, port: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        ds = load_dataset("digits")
        torch.manual_seed(rank)  # different initial weights per rank: DDP must broadcast rank 0's
        model = build_model("tiny_cnn", width=8)
        train(model, ds.x_train[:256], ds.y_train[:256], TrainConfig(epochs=1, lr=1e-2), seed=0, batch_size=64,
              progress=False)
        torch.save(model.state_dict(), os.path.join(out, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def test_two_gloo_ranks_end_with_identical_weights(tmp_path):
    mp.spawn(_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    a = torch.load(tmp_path / "rank0.pt", weights_only=True)
    b = torch.load(tmp_path / "rank1.pt", weights_only=True)
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    # and training moved the weights away from rank 0's initialization
    torch.manual_seed(0)
    init = build_model("tiny_cnn", width=8).state_dict()
    assert not torch.equal(init["head.0.weight"], a["head.0.weight"])
