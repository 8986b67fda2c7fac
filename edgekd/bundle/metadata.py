"""Model metadata inside the files themselves: TFLite metadata (tflite-support writers) and ONNX metadata_props.

Normalization convention: the model takes (pixel - mean) / std with mean/std on the pixel scale (0..255), which is
what TFLite metadata NormalizationOptions state (the Task Library and ML Binding apply them to raw pixels) and what
edgekd.data.ImageDataset stores; the ONNX metadata_props hold the same figures plus their 0..1-scale equivalents.

int8 TFLite files (litert-torch PT2E) have int8 input and output tensors. The ImageClassifier writer only fills the
min/max stats for float32 and uint8 tensors and the Task Library only runs float32 or uint8 inputs, so for int8 files
the metadata still carries normalization and labels, and the input/output descriptions state the tensor's own
scale and zero point: the app normalizes, then quantizes q = round(x / scale) + zero_point (and dequantizes the output).
The output is logits, not probabilities, so no [0, 1] stats are written for it.
"""
from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgekd.errors import EdgeKDError
from edgekd.logs import import_quietly

LABELS_NAME = "labels.txt"
_COLOR_SPACE = {1: "GRAYSCALE", 3: "RGB"}


@dataclass(frozen=True)
class Normalization:
    """Input normalization the model was trained with: x = (pixel - mean) / std per channel, pixels in 0..pixel_max.

    mean/std are on the pixel scale, as edgekd.data.ImageDataset stores them and TFLite metadata states them
    (Fashion-MNIST: mean 72.94, std 90.02); use `from_unit_scale` for 0..1-scale figures (0.286, 0.353).
    """

    mean: tuple[float, ...]
    std: tuple[float, ...]
    pixel_max: float = 255.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "mean", tuple(float(m) for m in self.mean))
        object.__setattr__(self, "std", tuple(float(s) for s in self.std))
        if not self.mean or len(self.mean) != len(self.std):
            raise ValueError(f"normalization mean {self.mean} and std {self.std} must be non-empty and of equal "
                             f"length (one value per channel)")
        if any(s <= 0 for s in self.std):
            raise ValueError(f"normalization std must be > 0 per channel, got {self.std}")
        if self.pixel_max <= 0:
            raise ValueError(f"pixel_max must be > 0 (255 for 8-bit images), got {self.pixel_max}")
        if self.pixel_max > 1 and max(self.std) <= 1 and max(abs(m) for m in self.mean) <= 1:
            raise ValueError(f"normalization mean {self.mean} / std {self.std} look like 0..1-scale figures; give them "
                             f"on the 0..{self.pixel_max:g} pixel scale (multiply by {self.pixel_max:g}) or use "
                             f"Normalization.from_unit_scale(mean, std)")

    @classmethod
    def from_unit_scale(cls, mean: tuple[float, ...], std: tuple[float, ...], pixel_max: float = 255.0
                        ) -> "Normalization":
        """From figures for pixels scaled to 0..1 (torchvision style: x = (pixel / 255 - mean) / std)."""
        return cls(tuple(m * pixel_max for m in mean), tuple(s * pixel_max for s in std), pixel_max)

    @property
    def unit_mean(self) -> list[float]:
        return [m / self.pixel_max for m in self.mean]

    @property
    def unit_std(self) -> list[float]:
        return [s / self.pixel_max for s in self.std]

    def formula(self) -> str:
        return (f"x = (pixel - {_fmt(self.mean)}) / {_fmt(self.std)} for pixels in 0..{self.pixel_max:g} "
                f"(= (pixel / {self.pixel_max:g} - {_fmt(self.unit_mean)}) / {_fmt(self.unit_std)})")


@dataclass(frozen=True)
class ModelInfo:
    """General facts every bundled model file states about itself."""

    name: str
    version: str
    description: str
    author: str
    license: str
    input_description: str
    output_description: str


def _fmt(values: list[float] | tuple[float, ...]) -> str:
    vals = [f"{v:.6g}" for v in values]
    return vals[0] if len(vals) == 1 else "[" + ", ".join(vals) + "]"


def image_channels(shape: list[int]) -> int:
    """Channels of an NCHW (litert-torch keeps torch's layout) or NHWC image input; 0 when not an image."""
    if len(shape) != 4:
        return 0
    if shape[1] in (1, 3, 4) or shape[3] not in (1, 3, 4):
        return int(shape[1])
    return int(shape[3])


def quantize_formula(t: dict[str, Any]) -> str:
    """How an app turns a normalized float into this tensor's integers (its own scale and zero point)."""
    return f"q = clip(round(x / {t['scale']:.8g}) + ({t['zero_point']}), {t['dtype']} range)"


def dequantize_formula(t: dict[str, Any]) -> str:
    return f"logits = (q - ({t['zero_point']})) * {t['scale']:.8g}"


def tflite_io(buf: bytes) -> dict[str, Any]:
    """Input/output tensor shape, dtype, scale and zero point, read from the flatbuffer (no interpreter needed)."""
    import_quietly("tensorflow_lite_support.metadata.schema_py_generated")
    from tensorflow_lite_support.metadata import schema_py_generated as schema

    names = {v: k for k, v in vars(schema.TensorType).items() if not k.startswith("_")}
    if len(buf) < 8 or buf[4:8] != b"TFL3":
        raise EdgeKDError("not a TFLite flatbuffer (no 'TFL3' identifier at byte 4)")
    try:
        graph = schema.Model.GetRootAsModel(bytearray(buf), 0).Subgraphs(0)
        graph.Tensors(graph.Inputs(0)).ShapeAsNumpy()
    except Exception as e:  # flatbuffers raises assorted errors on bad buffers
        raise EdgeKDError(f"not a TFLite flatbuffer ({type(e).__name__}: {e})") from e

    def describe(index: int) -> dict[str, Any]:
        t = graph.Tensors(index)
        q = t.Quantization()
        scale = float(q.ScaleAsNumpy()[0]) if q is not None and q.ScaleLength() else None
        zp = int(q.ZeroPointAsNumpy()[0]) if q is not None and q.ZeroPointLength() else None
        return {"shape": [int(d) for d in t.ShapeAsNumpy()], "dtype": names.get(t.Type(), str(t.Type())).lower(),
                "scale": scale, "zero_point": zp}

    return {"input": describe(graph.Inputs(0)), "output": describe(graph.Outputs(0))}


def write_tflite_metadata(src: Path, dst: Path, info: ModelInfo, labels: list[str], norm: Normalization) -> Path:
    """Write `src` to `dst` with ImageClassifier metadata: general facts, normalization, labels.txt packed inside."""
    import_quietly("tensorflow_lite_support.metadata.python.metadata_writers.image_classifier")
    from tensorflow_lite_support.metadata import metadata_schema_py_generated as mfb
    from tensorflow_lite_support.metadata.python.metadata_writers import image_classifier, metadata_info, writer_utils

    buf = bytearray(Path(src).read_bytes())
    io = tflite_io(buf)
    in_type = writer_utils.get_input_tensor_types(buf)[0]
    channels = image_channels(io["input"]["shape"])
    if channels and len(norm.mean) not in (1, channels):
        raise EdgeKDError(f"{Path(src).name}: normalization has {len(norm.mean)} channel(s) but the input "
                          f"{io['input']['shape']} has {channels}; give one mean/std per input channel")
    in_desc, out_desc = info.input_description, info.output_description
    if io["input"]["dtype"] in ("int8", "uint8"):
        i, o = io["input"], io["output"]
        in_desc += f" {i['dtype']} tensor: normalize, then quantize: {quantize_formula(i)}."
        if o["dtype"] in ("int8", "uint8"):
            out_desc += f" {o['dtype']} tensor: {dequantize_formula(o)}."
    general = metadata_info.GeneralMd(name=info.name, version=info.version, description=info.description,
                                      author=info.author, licenses=info.license)
    color = getattr(mfb.ColorSpaceType, _COLOR_SPACE.get(channels, "UNKNOWN"))
    input_md = metadata_info.InputImageTensorMd(name="image", description=in_desc, norm_mean=list(norm.mean),
                                                norm_std=list(norm.std), color_space_type=color, tensor_type=in_type)
    with tempfile.TemporaryDirectory() as tmp:
        label_path = Path(tmp) / LABELS_NAME
        label_path.write_text("\n".join(labels) + "\n")
        # tensor_type=None: the writer would state [0, 1] stats for float32, but the output is logits.
        output_md = metadata_info.ClassificationTensorMd(
            name="logits", description=out_desc, label_files=[metadata_info.LabelFileMd(str(label_path))],
            tensor_type=None)
        try:
            writer = image_classifier.MetadataWriter.create_from_metadata_info(
                buf, general_md=general, input_md=input_md, output_md=output_md)
            out = writer.populate()
        except (ValueError, RuntimeError) as e:
            raise EdgeKDError(f"cannot write TFLite metadata into {Path(src).name}: {e}") from e
    Path(dst).write_bytes(_fixed_zip_times(bytes(out)))
    return Path(dst)


def _fixed_zip_times(buf: bytes) -> bytes:
    """Set the packed-files zip (appended after the flatbuffer) to a fixed 1980-01-01 time stamp.

    The populator packs labels.txt with the current time, so the same inputs would give different files;
    only the DOS time/date fields of the headers change (CRCs cover data only).
    """
    import io
    import struct
    import zipfile

    out = bytearray(buf)
    stamp = struct.pack("<HH", 0, (0 << 9) | (1 << 5) | 1)  # 00:00:00, 1980-01-01
    with zipfile.ZipFile(io.BytesIO(buf)) as zf:
        pos = zf.start_dir
        for info in zf.infolist():
            if out[info.header_offset:info.header_offset + 4] == b"PK\x03\x04":
                out[info.header_offset + 10:info.header_offset + 14] = stamp
        for _ in zf.infolist():
            if out[pos:pos + 4] != b"PK\x01\x02":
                break
            out[pos + 12:pos + 16] = stamp
            n, m, k = struct.unpack("<HHH", out[pos + 28:pos + 34])
            pos += 46 + n + m + k
    return bytes(out)


def read_tflite_metadata(model: Path | bytes) -> dict[str, Any]:
    """The metadata of a .tflite file: general facts, labels, normalization (pixel scale), tensor types."""
    import_quietly("tensorflow_lite_support.metadata.python.metadata")
    from tensorflow_lite_support.metadata.python import metadata

    buf = Path(model).read_bytes() if isinstance(model, (str, Path)) else bytes(model)
    io = tflite_io(buf)
    try:
        shown = metadata.MetadataDisplayer.with_model_buffer(buf)
    except Exception as e:  # ValueError when absent; flatbuffers raises struct/index errors on damaged buffers
        raise EdgeKDError(f"TFLite file has no readable metadata: {e}") from e
    md = json.loads(shown.get_metadata_json())
    sub = (md.get("subgraph_metadata") or [{}])[0]
    inp = (sub.get("input_tensor_metadata") or [{}])[0]
    out = (sub.get("output_tensor_metadata") or [{}])[0]
    norm = next((u["options"] for u in inp.get("process_units", [])
                 if u.get("options_type") == "NormalizationOptions"), {})
    packed = shown.get_packed_associated_file_list()
    labels = None
    if LABELS_NAME in packed:
        labels = shown.get_associated_file_buffer(LABELS_NAME).decode().splitlines()
    return {"name": md.get("name"), "version": md.get("version"), "description": md.get("description"),
            "author": md.get("author"), "license": md.get("license"),
            "input_description": inp.get("description"), "output_description": out.get("description"),
            "color_space": (inp.get("content", {}).get("content_properties") or {}).get("color_space"),
            "norm_mean": norm.get("mean"), "norm_std": norm.get("std"), "labels": labels,
            "associated_files": packed, **{f"{k}_tensor": v for k, v in io.items()}}


def onnx_properties(info: ModelInfo, labels: list[str], norm: Normalization) -> dict[str, str]:
    """The same facts as the TFLite metadata, as ONNX metadata_props string key/values."""
    return {"name": info.name, "version": info.version, "description": info.description, "author": info.author,
            "license": info.license, "input_description": info.input_description,
            "output_description": info.output_description, "labels": json.dumps(list(labels)),
            "norm_mean": json.dumps(list(norm.mean)), "norm_std": json.dumps(list(norm.std)),
            "pixel_max": json.dumps(norm.pixel_max), "unit_mean": json.dumps(norm.unit_mean),
            "unit_std": json.dumps(norm.unit_std), "normalization": norm.formula()}


def write_onnx_metadata(src: Path, dst: Path, info: ModelInfo, labels: list[str], norm: Normalization) -> Path:
    """Write `src` to `dst` as one self-contained file (external data folded in) with metadata_props set."""
    import onnx

    try:
        model = onnx.load(str(src))  # also loads external data (torch.onnx dynamo writes <name>.onnx.data)
    except Exception as e:
        raise EdgeKDError(f"cannot read ONNX file {Path(src).name}: {e}") from e
    props = onnx_properties(info, labels, norm)
    keep = [p for p in model.metadata_props if p.key not in props]
    del model.metadata_props[:]
    model.metadata_props.extend(keep)
    for k, v in props.items():
        model.metadata_props.add(key=k, value=v)
    model.doc_string = info.description
    if model.ByteSize() > 2_000_000_000:
        raise EdgeKDError(f"{Path(src).name} is over 2 GB and cannot be bundled as a single ONNX file")
    onnx.save(model, str(dst), save_as_external_data=False)
    return Path(dst)


def read_onnx_metadata(model: Path | bytes) -> dict[str, Any]:
    """metadata_props of an ONNX file, JSON values decoded, plus its input and output shapes."""
    import onnx

    try:
        m = onnx.load_model_from_string(model) if isinstance(model, bytes) else \
            onnx.load(str(model), load_external_data=False)
    except Exception as e:
        raise EdgeKDError(f"not a readable ONNX file: {e}") from e
    out: dict[str, Any] = {}
    for p in m.metadata_props:
        try:
            out[p.key] = json.loads(p.value) if p.key in ("labels", "norm_mean", "norm_std", "pixel_max",
                                                         "unit_mean", "unit_std") else p.value
        except ValueError:
            out[p.key] = p.value

    def describe(v: Any) -> dict[str, Any]:
        t = v.type.tensor_type
        return {"name": v.name, "dtype": onnx.helper.tensor_dtype_to_np_dtype(t.elem_type).name,
                "shape": [d.dim_value if d.HasField("dim_value") else (d.dim_param or -1) for d in t.shape.dim]}

    if m.graph.input:
        out["input_tensor"] = describe(m.graph.input[0])
    if m.graph.output:
        out["output_tensor"] = describe(m.graph.output[0])
    return out
