"""LM profiling: the HF past-key-values ONNX layout (parity, greedy agreement, batch + padding), the child-process
peak memory, and phone predictions against hand-computed figures (marked predicted, never measured)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from edgekd.lm.decoder import CachedLM, PastKeyValuesLM, past_names
from edgekd.lm.runtime import TorchSession, greedy_generate
from tests.lm_fixtures import VOCAB, tiny_llama

CONFIG = {"hidden_size": 8, "num_hidden_layers": 2, "vocab_size": 10, "num_attention_heads": 2,
          "num_key_value_heads": 1, "head_dim": 4, "intermediate_size": 16}


def test_past_key_values_decoder_matches_transformers_with_padding():
    model = tiny_llama(layers=2)
    x = torch.randint(2, VOCAB, (2, 10))
    d = PastKeyValuesLM(model, 64)
    with torch.no_grad():
        ref = model(x).logits
        out = d(x[:, :6], torch.ones(2, 6, dtype=torch.long), torch.arange(6).expand(2, 6),
                *[torch.zeros(2, 2, 0, 8) for _ in past_names(2)[0]])
        assert torch.allclose(out[0], ref[:, :6], atol=1e-5) and out[1].shape == (2, 2, 6, 8)
        past = out[1:]
        for p in range(6, 10):
            out = d(x[:, p:p + 1], torch.ones(2, p + 1, dtype=torch.long), torch.full((2, 1), p), *past)
            past = out[1:]
            assert torch.allclose(out[0][:, 0], ref[:, p], atol=1e-5)
        # left padding: row 0 has two pad tokens masked out; its logits equal the unpadded sequence's
        padded = torch.cat([torch.zeros(1, 2, dtype=torch.long), x[:1, :4]], 1)
        mask = torch.tensor([[0, 0, 1, 1, 1, 1]])
        pos = torch.tensor([[0, 0, 0, 1, 2, 3]])
        out = d(padded, mask, pos, *[torch.zeros(1, 2, 0, 8) for _ in range(4)])
        assert torch.allclose(out[0][0, 2:], ref[0, :4], atol=1e-5)


@pytest.mark.export
def test_onnx_past_key_values_file_runs_in_onnxruntime_like_genai(tmp_path):
    """The *.kv.onnx file has the HF input/output names and dynamic batch/lengths; a batch-2 loop over it agrees
    with transformers, and edgekd's session greedy-decodes as the torch cache does."""
    import onnxruntime as ort

    from edgekd.lm import export as ex
    from edgekd.lm.runtime import open_lm_session

    model = tiny_llama(layers=2)
    path = ex.export_onnx_kv(model, 32, tmp_path / "s.kv.onnx")
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    past, present = past_names(2)
    assert [i.name for i in sess.get_inputs()] == ["input_ids", "attention_mask", "position_ids", *past]
    assert [o.name for o in sess.get_outputs()] == ["logits", *present]
    x = np.random.default_rng(0).integers(2, VOCAB, (2, 9))
    with torch.no_grad():
        ref = model(torch.from_numpy(x)).logits.numpy()
    feeds = {"input_ids": x[:, :5], "attention_mask": np.ones((2, 5), np.int64),
             "position_ids": np.tile(np.arange(5), (2, 1)), **{n: np.zeros((2, 2, 0, 8), np.float32) for n in past}}
    out = sess.run(None, feeds)
    assert np.abs(out[0] - ref[:, :5]).max() < 1e-4
    for p in range(5, 9):
        feeds = {"input_ids": x[:, p:p + 1], "attention_mask": np.ones((2, p + 1), np.int64),
                 "position_ids": np.full((2, 1), p), **dict(zip(past, out[1:]))}
        out = sess.run(None, feeds)
        assert np.abs(out[0][:, 0] - ref[:, p]).max() < 1e-4
    session = open_lm_session(path)
    assert (session.kind, session.max_len) == ("kv", 32)
    prompt = x[0, :6]
    assert greedy_generate(session, prompt, 5) == greedy_generate(TorchSession(CachedLM(model, 32), "kv"), prompt, 5)


def test_peak_memory_is_the_child_process_high_water(tmp_path):
    """Measured in a child (VmHWM), so the parent's own memory (here a 200 MB tensor) is not counted."""
    from edgekd.lm import export as ex
    from edgekd.lm.profile import peak_memory

    path = ex.export_onnx(tiny_llama(layers=1), 8, tmp_path / "s.onnx")
    ballast = torch.ones(50_000_000)  # 200 MB in this process
    mem = peak_memory(path, 8, decode_tokens=2)
    assert float(ballast[0]) == 1.0
    assert 0 < mem["session_peak_mb"] < mem["peak_rss_mb"] < 190, mem
    assert "VmHWM" in mem["method"]
    assert "error" in peak_memory(tmp_path / "missing.onnx", 8)


def test_phone_prediction_matches_hand_computed_figures():
    from edgekd.lm.phone import GEMM_EFFICIENCY, MEM_EFFICIENCY, kv_bytes, macs_per_token, predict_lm_speed
    from edgekd.profile.predict.predictor import PRIOR_OVERHEAD_S, PRIOR_T0_S
    from edgekd.profile.targets import load_target

    # per layer: q,o 8*8 each (2*64) + k,v 8*4 each (2*32) + MLP 3*8*16 (384) + attention 2*2*4*(pos+1)
    assert macs_per_token(CONFIG, position=0) == 2 * (128 + 64 + 384 + 16) + 8 * 10
    assert kv_bytes(CONFIG, 3) == 2 * 2 * 1 * 4 * 3 * 4
    pixel = load_target("pixel-8")
    big = 100_000_000  # memory-bound: 100 MB of weights per token
    r = predict_lm_speed(pixel, big, CONFIG, precision="fp32", prompt_len=4, decode_tokens=2)
    bandwidth = 68e9 * MEM_EFFICIENCY
    overhead = PRIOR_T0_S + (2 * 7 + 1) * PRIOR_OVERHEAD_S["mac"] + 2 * 15 * PRIOR_OVERHEAD_S["cheap"]
    assert r["source"] == "predicted" and r["decode_bound"] == "memory"
    assert r["decode_tokens_per_s"] == pytest.approx(1 / ((big + kv_bytes(CONFIG, 5)) / bandwidth + overhead))
    prefill = 4 * 2 * macs_per_token(CONFIG, 2) / (207e9 * GEMM_EFFICIENCY) + big / bandwidth + overhead
    assert r["ttft_ms"] == pytest.approx(prefill * 1e3)
    assert "not measured" in r["assumptions"] and "68" in r["assumptions"]
    int8 = predict_lm_speed(pixel, big // 4, CONFIG, precision="int8", prompt_len=4, decode_tokens=2)
    assert int8["decode_tokens_per_s"] > 3.5 * r["decode_tokens_per_s"]  # 4x fewer bytes, same overhead


def test_phone_figures_without_a_phone_are_predicted_for_kv_files_only(tmp_path, monkeypatch):
    from edgekd.lm import phone

    monkeypatch.setenv("PATH", str(tmp_path))  # no adb on PATH: nothing attached
    assert phone.attached_phone() is None
    files = {}
    for name in ("student.kv.tflite", "student.int8.kv.tflite", "student.tflite", "student.kv.onnx"):
        files[name] = tmp_path / name
        files[name].write_bytes(b"\0" * 4000)
    figs = phone.phone_figures("galaxy-s24", files, CONFIG, prompt_len=4, decode_tokens=2)
    assert set(figs) == {"student.kv.tflite", "student.int8.kv.tflite"}
    assert {f["source"] for f in figs.values()} == {"predicted"}
    assert figs["student.int8.kv.tflite"]["precision"] == "int8"


def test_phone_figures_with_an_attached_phone_measure_fixed_tflite_over_adb(tmp_path, fake_phone):
    """With a phone on adb (the project's fake adb replaying a recorded benchmark_model log), fixed-length .tflite
    files are measured there; KV-cache files stay predicted (benchmark_model times whole invocations)."""
    from edgekd.lm import phone

    serial = phone.attached_phone()
    assert serial == "38011FDJH000XY"
    files = {n: tmp_path / n for n in ("student.tflite", "student.kv.tflite")}
    for p in files.values():
        p.write_bytes(b"\0" * 1000)
    figs = phone.phone_figures("pixel-8", files, CONFIG, prompt_len=4, decode_tokens=2, serial=serial)
    measured = figs["student.tflite"]
    assert measured["source"] == "measured" and measured["full_forward_ms"]["p50"] == pytest.approx(0.168712)
    assert measured["device"].startswith("Pixel 8") and measured["peak_mem_mb"] == pytest.approx(11.3281)
    assert figs["student.kv.tflite"]["source"] == "predicted"
