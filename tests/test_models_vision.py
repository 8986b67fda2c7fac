"""torchvision and timm import on the CPU torch (PyPI's torchvision wheel has CUDA-only compiled ops)."""
import torch

from edgekd.models.vision import import_timm, import_torchvision


def test_torchvision_classifier_builds_and_runs_on_cpu():
    tv = import_torchvision()
    model = tv.models.mobilenet_v3_small(num_classes=7).eval()
    with torch.no_grad():
        assert model(torch.randn(2, 3, 64, 64)).shape == (2, 7)


def test_timm_model_builds_and_runs_on_cpu():
    timm = import_timm()
    model = timm.create_model("mobilenetv4_conv_small", pretrained=False, num_classes=3).eval()
    with torch.no_grad():
        assert model(torch.randn(1, 3, 64, 64)).shape == (1, 3)
