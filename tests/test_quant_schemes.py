"""Quantization schemes: ranges per runtime, selection for a set of runtimes, VNNI detection, validation."""
import pytest

from edgekd.errors import EdgeKDError
from edgekd.quant import SCHEMES, Scheme, detect_cpu_vnni, get_scheme, scheme_for_runtimes


def test_registered_schemes_have_the_runtime_ranges():
    assert SCHEMES.names() == ["litert_int8", "ort_vnni", "ort_x86_novnni", "tensorrt_int8"]
    lite = SCHEMES.get("litert_int8")
    assert (lite.weight_qmin, lite.weight_qmax, lite.per_channel) == (-127, 127, True)
    assert (lite.activation_qmin, lite.activation_qmax, lite.symmetric_activations) == (-128, 127, False)
    novnni = SCHEMES.get("ort_x86_novnni")
    assert (novnni.weight_qmin, novnni.weight_qmax) == (-64, 63)
    assert novnni.weight_bits == 7.0 and lite.weight_bits == pytest.approx(7.99, abs=0.01)
    # 7-bit weights never saturate ORT's int16 pair sums: 255 * 64 * 2 < 2**15 - 1; 8-bit ones can.
    assert 255 * max(-novnni.weight_qmin, novnni.weight_qmax) * 2 < 2 ** 15 - 1
    assert 255 * lite.weight_qmax * 2 > 2 ** 15 - 1
    trt = SCHEMES.get("tensorrt_int8")
    assert trt.symmetric_activations and trt.weight_qmax == 127


@pytest.mark.parametrize("runtimes, vnni, expected", [
    (["litert"], None, "litert_int8"),
    (["litert", "onnxruntime"], False, "ort_x86_novnni"),
    (["onnxruntime"], True, "ort_vnni"),
    (["onnxruntime", "litert"], True, "ort_vnni"),
    (["tensorrt"], False, "tensorrt_int8"),
    (["tensorrt", "litert"], None, "tensorrt_int8"),
])
def test_scheme_for_runtimes(runtimes, vnni, expected):
    assert scheme_for_runtimes(runtimes, cpu_has_vnni=vnni).name == expected


def test_override_by_name_wins_and_unknown_names_are_explained():
    assert scheme_for_runtimes(["litert"], override="ort_x86_novnni").name == "ort_x86_novnni"
    with pytest.raises(EdgeKDError, match="did you mean 'litert_int8'"):
        get_scheme("litert_int9")
    with pytest.raises(EdgeKDError, match="unknown runtime.*'coreml'.*known: litert"):
        scheme_for_runtimes(["coreml"])
    with pytest.raises(EdgeKDError, match="at least one runtime"):
        scheme_for_runtimes([])
    with pytest.raises(EdgeKDError, match="quantize once per runtime"):
        scheme_for_runtimes(["tensorrt", "onnxruntime"], cpu_has_vnni=False)


def test_vnni_detection_reads_cpu_flags(tmp_path):
    no = tmp_path / "no"
    no.write_text("processor : 0\nflags : fpu sse avx2 fma\n")
    yes = tmp_path / "yes"
    yes.write_text("processor : 0\nflags : fpu avx2 avx512f avx512_vnni\n")
    avx = tmp_path / "avx"
    avx.write_text("flags\t\t: avx2 avx_vnni\n")
    assert not detect_cpu_vnni(no)
    assert detect_cpu_vnni(yes) and detect_cpu_vnni(avx)
    assert not detect_cpu_vnni(tmp_path / "missing")


def test_scheme_validation_and_round_trip():
    with pytest.raises(ValueError, match=r"weight range -200..127 must satisfy -128 <= qmin"):
        Scheme("bad", weight_qmin=-200)
    with pytest.raises(ValueError, match="weight_dtype 'int4' is not supported"):
        Scheme("bad", weight_dtype="int4")
    with pytest.raises(ValueError, match="symmetric_weights=False is not supported"):
        Scheme("bad", symmetric_weights=False)
    s = SCHEMES.get("ort_x86_novnni")
    assert Scheme.from_dict(s.to_dict()) == s
    with pytest.raises(ValueError, match=r"unknown scheme field\(s\) \['bits'\]"):
        Scheme.from_dict({"name": "x", "bits": 4})
