import math

import pytest
import torch
import torch.nn.functional as F

from edgekd.train import TrainConfig
from edgekd.distill.mutual import MutualObjective, MutualPeers, born_again, train_mutual
from edgekd.errors import EdgeKDError
from edgekd.models import build_model


def test_mutual_objective_against_hand_computed_values():
    logits = torch.tensor([[[2.0, 0.0]], [[0.0, 1.0]]])  # 2 peers, batch 1, 2 classes
    y = torch.tensor([0])
    out = MutualObjective(kl_weight=1.0)(logits, y)
    p1 = torch.tensor([math.exp(2), 1.0]) / (math.exp(2) + 1)
    p2 = torch.tensor([1.0, math.exp(1)]) / (1 + math.exp(1))
    ce = -math.log(p1[0]) - math.log(p2[0])
    kl = float((p2 * (p2 / p1).log()).sum() + (p1 * (p1 / p2).log()).sum())
    assert out["loss"].item() == pytest.approx(ce + kl, rel=1e-5)
    assert out["ce"].item() == pytest.approx(ce / 2, rel=1e-5)


def test_peer_gradients_come_only_from_its_own_loss():
    a, b = torch.nn.Linear(3, 2), torch.nn.Linear(3, 2)
    pair = MutualPeers([a, b]).train()
    out = MutualObjective()(pair(torch.randn(4, 3)), torch.tensor([0, 1, 0, 1]))
    out["loss"].backward()
    assert a.weight.grad is not None and b.weight.grad is not None
    assert pair.eval()(torch.randn(4, 3)).shape == (4, 2)
    with pytest.raises(EdgeKDError, match="at least 2 peers"):
        MutualPeers([a])


def test_dml_trains_two_students(digits):
    peers = [build_model("tiny_cnn", width=8), build_model("tiny_cnn", width=8)]
    result = train_mutual(peers, digits.x_train[:512], digits.y_train[:512], TrainConfig(epochs=2, lr=1e-2),
                          x_test=digits.x_test, y_test=digits.y_test, batch_size=64, progress=False)
    assert {"ce", "mutual_kl"} <= set(result.history[-1]["parts"])
    assert result.history[-1]["test_accuracy"] > 0.3


def test_born_again_generations_learn_from_the_previous_one(digits):
    torch.manual_seed(0)
    teacher = build_model("tiny_cnn", width=8).eval()
    gens = born_again(lambda: build_model("tiny_cnn", width=8), teacher, 2, digits.x_train[:256],
                      digits.y_train[:256], TrainConfig(epochs=1, lr=1e-2),
                      [{"name": "ce", "weight": 0.5}, {"name": "kd_soft", "weight": 0.5, "temperature": 2.0}],
                      batch_size=64, progress=False)
    assert len(gens) == 2 and gens[0][0] is not gens[1][0]
    assert "kd_soft" in gens[1][1].history[-1]["parts"]
