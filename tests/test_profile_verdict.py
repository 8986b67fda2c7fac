"""int8-vs-fp32 verdicts: ratio, wording, pairing."""
import pytest

from edgekd.profile.result import LatencyResult
from edgekd.profile.verdict import compare, verdict_text, verdicts


def res(name, precision, p50, measured=True, runtime="onnxruntime", target="cpu-local", nbytes=None):
    return LatencyResult(name=name, runtime=runtime, precision=precision, threads=1, measured=measured, p50_ms=p50,
                         target=target, bytes=nbytes)


def test_sentence_matches_the_report_wording():
    assert verdict_text("cpu-local", "onnxruntime", 0.86, True) == (
        "On cpu-local with onnxruntime, int8 is 0.86x the speed of fp32 (measured): slower; its gain here is size.")
    assert verdict_text("pixel-8", "litert", 1.9, False) == (
        "On pixel-8 with litert, int8 is 1.90x the speed of fp32 (predicted): faster.")
    assert "about the same speed" in verdict_text("x", "litert", 1.02, True)


def test_compare_ratio_measured_flag_and_size():
    v = compare(res("m_fp32", "fp32", 0.30, nbytes=4000), res("m_int8", "int8", 0.40, nbytes=1000))
    assert v.int8_vs_fp32_speedup == pytest.approx(0.75) and v.measured and v.size_ratio == 4.0
    assert v.text.endswith("slower; its gain here is size (4.0x smaller).")
    assert set(v.to_dict()) == {"target", "runtime", "int8_vs_fp32_speedup", "measured", "text", "size_ratio",
                                "outcome"} and v.outcome == "slower"
    v = compare(res("m_fp32", "fp32", 0.30), res("m_int8", "int8", 0.15, measured=False))
    assert v.int8_vs_fp32_speedup == pytest.approx(2.0) and not v.measured and "(predicted): faster." in v.text
    with pytest.raises(ValueError, match="need a median latency"):
        compare(res("a", "fp32", None), res("b", "int8", 1.0))


def test_pairs_by_target_runtime_and_name():
    rs = [res("student_fp32", "fp32", 1.0), res("student_int8", "int8", 0.5),
          res("teacher_fp32", "fp32", 4.0), res("teacher_int8", "int8", 5.0),
          res("student", "fp32", 0.3, runtime="litert"), res("student_q", "int8", 0.6, runtime="litert"),
          res("only_fp32", "fp32", 1.0, target="pixel-8")]
    vs = verdicts(rs)
    got = {(v.runtime, round(v.int8_vs_fp32_speedup, 3)) for v in vs}
    assert got == {("onnxruntime", 2.0), ("onnxruntime", 0.8), ("litert", 0.5)}


def test_overlapping_predictions_say_unknown():
    fp, q = res("m_fp32", "fp32", 1.27, measured=False), res("m_int8", "int8", 1.0, measured=False)
    fp.uncertainty = q.uncertainty = 1.0  # two uncalibrated +-100% predictions
    v = compare(fp, q)
    assert v.outcome == "unknown" and v.int8_vs_fp32_speedup == pytest.approx(1.27)
    assert v.text == ("On cpu-local with onnxruntime, int8 vs fp32 speed is unknown (predicted 1.27x, but the "
                      "uncertainty intervals overlap): measure on the device.")
    assert "faster" not in v.text
    fp.uncertainty = q.uncertainty = 0.05  # [1.2065, 1.3335] vs [0.95, 1.05]: apart
    v = compare(fp, q)
    assert v.outcome == "faster" and v.text.endswith("(predicted): faster.")
    # a measurement against a +-30% prediction that reaches it
    m = res("m_fp32", "fp32", 1.2)
    q.uncertainty = 0.3
    assert compare(m, q).outcome == "unknown"
    assert compare(res("a_fp32", "fp32", 1.2), res("a_int8", "int8", 1.0)).outcome == "faster"  # both measured


def test_names_with_file_suffixes_pair_per_runtime():
    rs = [res("student_fp32.onnx", "fp32", 1.0), res("student_int8.onnx", "int8", 0.5),
          res("teacher_fp32.onnx", "fp32", 4.0), res("teacher_int8.onnx", "int8", 5.0),
          res("student_fp32.onnx", "fp32", 1.0, runtime="tensorrt"),
          res("student_int8.onnx", "int8", 0.25, runtime="tensorrt")]
    got = sorted((v.runtime, round(v.int8_vs_fp32_speedup, 3)) for v in verdicts(rs))
    assert got == [("onnxruntime", 0.8), ("onnxruntime", 2.0), ("tensorrt", 4.0)]
