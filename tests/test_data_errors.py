"""Bad streamed inputs fail with one EdgeKDError line that says what is wrong and what to do."""
import pytest

from data_fixtures import write_folder, write_manifest
from edgekd.config import parse_recipe
from edgekd.data.files import read_manifest, scan_folder
from edgekd.data.streaming import StreamOptions, load_streaming
from edgekd.errors import EdgeKDError


def _one_line(e):
    assert "\n" not in str(e.value), str(e.value)


def test_missing_folder(tmp_path):
    with pytest.raises(EdgeKDError, match="image folder not found") as e:
        scan_folder(tmp_path / "nope")
    _one_line(e)


def test_folder_without_images(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "notes.txt").write_text("x")
    with pytest.raises(EdgeKDError, match="no images"):
        scan_folder(tmp_path)


@pytest.mark.parametrize("workers", [0, 1])
def test_unreadable_image_names_the_file(tmp_path, workers):
    write_folder(tmp_path, per_class=4)
    (tmp_path / "c1" / "000.jpg").write_bytes(b"\xff\xd8\xff not really a jpeg")
    ds = load_streaming("image_folder", str(tmp_path), test_root=str(tmp_path), mean=[1.0], std=[1.0],
                        options=StreamOptions(resolution=8, workers=workers))
    with pytest.raises(EdgeKDError, match=r"cannot decode image .*c1/000.jpg") as e:
        list(ds.train_source(True).epoch(0, 0, 4))
    _one_line(e)


def test_manifest_label_out_of_range(tmp_path):
    path = write_manifest(tmp_path)
    path.write_text(path.read_text().replace("img/2_0.png,2", "img/2_0.png,7"))
    with pytest.raises(EdgeKDError, match=r"label 7 of row \d+ .* out of range; labels must be 0..2") as e:
        read_manifest(path, ["a", "b", "c"])
    _one_line(e)
    with pytest.raises(EdgeKDError, match="label -1"):
        path.write_text("path,label\nimg/0_0.png,-1\n")
        read_manifest(path)


def test_manifest_missing_file_and_bad_header(tmp_path):
    path = write_manifest(tmp_path)
    (tmp_path / "img" / "1_3.png").unlink()
    with pytest.raises(EdgeKDError, match=r"1 listed file\(s\) do not exist, e.g. .*1_3.png"):
        read_manifest(path)
    path.write_text("file,class\na.png,0\n")
    with pytest.raises(EdgeKDError, match="must name columns 'path' and 'label'"):
        read_manifest(path)


def test_recipe_validation_lines():
    with pytest.raises(EdgeKDError) as e:
        parse_recipe({"data": {"dataset": "manifest", "root": "x.csv", "workers": -1, "resolution": 3,
                               "crop_scale": [0.9, 0.2], "augment": "randaug"}})
    msg = str(e.value)
    for part in ("data.stream: dataset 'manifest' streams its images from disk: set data.stream: true",
                 "data.workers: must be >= 0, got -1", "data.resolution: the input side in pixels, 8..4096, got 3",
                 "data.crop_scale: [min, max] area fractions", "data.augment: 'randaug' is not allowed"):
        assert part in msg, msg
    with pytest.raises(EdgeKDError, match="dataset 'digits' is loaded into memory"):
        parse_recipe({"data": {"dataset": "digits", "stream": True, "root": "x"}})


def test_cli_exit_2_for_a_missing_stream_root(tmp_path):
    import subprocess
    import sys

    import yaml

    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump({"data": {"dataset": "image_folder", "stream": True,
                                               "root": str(tmp_path / "missing")}}))
    p = subprocess.run([sys.executable, "-m", "edgekd", "validate", str(recipe)], capture_output=True, text=True)
    assert p.returncode == 2 and "image folder not found" in p.stderr and "Traceback" not in p.stderr
