"""torchvision and timm on the CPU torch; models by name, head replacement, own callables, input checks."""
import sys

import pytest
import torch
from torch import nn

from edgekd.errors import EdgeKDError
from edgekd.models import build_for_data, build_model, check_model_input, load_model_file, save_model_file
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



def test_models_by_library_name_with_head_replacement_reload(tmp_path):
    built = build_for_data("torchvision:mobilenet_v3_small", {}, input_shape=(3, 32, 32), num_classes=7)
    assert built.head == 7 and "replaced the 1000-class head (classifier.3)" in built.notes[0]
    path = save_model_file(built.module, built.name, built.kwargs, tmp_path / "m.pt", **built.file_info())
    again, info = load_model_file(path)
    x = torch.randn(2, 3, 32, 32)
    built.module.eval()
    torch.testing.assert_close(again(x), built.module(x))
    assert info["model"] == "torchvision:mobilenet_v3_small" and info["head"] == 7 and info["kwargs"] == {}
    # kwargs exactly as written: num_classes given -> no head replacement
    direct = build_for_data("torchvision:resnet18", {"num_classes": 4}, input_shape=(3, 32, 32), num_classes=4)
    assert direct.head is None and direct.kwargs == {"num_classes": 4}
    timm = build_for_data("timm:mobilenetv4_conv_small", {}, input_shape=(3, 32, 32), num_classes=5)
    assert timm.head == 5 and timm.module(x).shape == (2, 5)
    with pytest.raises(EdgeKDError, match=r"unknown torchvision model 'mobilenet_v3_smal'; did you mean "
                                          r"'mobilenet_v3_small'"):
        build_model("torchvision:mobilenet_v3_smal")
    with pytest.raises(EdgeKDError, match=r"unknown timm model 'mobilenetv4_conv_smal'"):
        build_model("timm:mobilenetv4_conv_smal")


def test_torchvision_checkpoint_weights_then_head(tmp_path):
    tv = import_torchvision()
    src = tv.models.squeezenet1_0()  # 1000 classes, like a downloaded ImageNet checkpoint
    torch.save({"model": src.state_dict(), "epoch": 90}, tmp_path / "ckpt.pth")
    built = build_for_data("torchvision:squeezenet1_0", {}, input_shape=(3, 64, 64), num_classes=3,
                           weights=str(tmp_path / "ckpt.pth"))
    assert built.head == 3 and "classifier.1" in built.notes[0]
    torch.testing.assert_close(built.module.features[0].weight, src.features[0].weight)  # the weights were loaded
    with pytest.raises(EdgeKDError, match=r"key 'classifier.1.weight' has shape \(1000, 512, 1, 1\).*leave "
                                          r"num_classes out of kwargs"):
        build_for_data("torchvision:squeezenet1_0", {"num_classes": 3}, input_shape=(3, 64, 64), num_classes=3,
                       weights=str(tmp_path / "ckpt.pth"))
    with pytest.raises(EdgeKDError, match=r"outputs 1000 classes, the data has 3: a loaded teacher must predict"):
        build_for_data("torchvision:squeezenet1_0", {}, input_shape=(3, 64, 64), num_classes=3,
                       weights=str(tmp_path / "ckpt.pth"), replace=False)


MYMODELS = '''
import torch
from torch import nn


class Net(nn.Module):
    """A third-party model without num_classes or in_channels arguments."""

    def __init__(self, hidden=8):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, hidden, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.fc = nn.Linear(hidden, 10)

    def forward(self, x):
        return self.fc(self.body(x))


def build(hidden=8):
    return Net(hidden)
'''


def test_own_callable_from_the_recipe_folder_without_class_arguments(tmp_path, monkeypatch):
    (tmp_path / "edgekd_test_mymodels.py").write_text(MYMODELS)
    before = list(sys.path)
    built = build_for_data("edgekd_test_mymodels:build", {"hidden": 6}, input_shape=(3, 16, 16), num_classes=4,
                           import_path=str(tmp_path))
    assert sys.path == before  # the folder was on sys.path only during the import
    assert built.kwargs == {"hidden": 6} and built.head == 4 and built.module.fc.out_features == 4
    save_model_file(built.module, built.name, built.kwargs, tmp_path / "m.pt", **built.file_info())
    sys.modules.pop("edgekd_test_mymodels")
    again, info = load_model_file(tmp_path / "m.pt")  # reloads in a fresh import: the file records the folder
    assert info["import_path"] == str(tmp_path) and again.fc.out_features == 4
    with pytest.raises(EdgeKDError, match=r"cannot import model 'edgekd_test_nothere:build'.*recipe's folder"):
        build_model("edgekd_test_nothere:build", import_folder=str(tmp_path))


def test_check_model_input_gives_one_line_for_the_wrong_image_size():
    with pytest.raises(EdgeKDError, match=r"model 'mlp' does not fit the data: the model's fully connected layer "
                                          r"expects 64 features, images of the data's size give 784"):
        check_model_input(build_model("mlp"), (1, 28, 28), 10, "mlp")
    with pytest.raises(EdgeKDError, match=r"the model expects 1 input channel\(s\), the data has 3"):
        check_model_input(build_model("tiny_cnn"), (3, 28, 28), 10)
    with pytest.raises(EdgeKDError, match=r"outputs shape \(2, 10\) for a batch of 2, the data has 4 classes"):
        check_model_input(build_model("tiny_cnn"), (1, 28, 28), 4)
    with pytest.raises(EdgeKDError, match="does not fit the data"):
        build_for_data("mlp", {}, input_shape=(1, 28, 28), num_classes=10)
    assert check_model_input(nn.Sequential(nn.Flatten(), nn.Linear(12, 3)), (3, 2, 2), 3) == (2, 3)
