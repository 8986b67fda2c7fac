"""The export-friendly decoder matches transformers; exported files verify and profile in their own runtime."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from edgekd.lm.decoder import CachedLM, FixedLengthLM, LiteRTLM
from edgekd.lm.runtime import TorchSession, greedy_generate
from tests.lm_fixtures import VOCAB, tiny_llama, tokenizer_folder


def test_fixed_and_cached_decoders_match_transformers():
    model = tiny_llama(layers=2)
    x = torch.randint(0, VOCAB, (2, 12))
    with torch.no_grad():
        ref = model(x).logits
        assert torch.allclose(FixedLengthLM(model, 12)(x), ref, atol=1e-5)
        step = CachedLM(model, 16)
        k = torch.zeros(step.cache_shape())
        logits, k, v = step(x[:1, :8], torch.arange(8), k, torch.zeros_like(k))
        assert torch.allclose(logits, ref[:1, :8], atol=1e-5)
        for p in range(8, 12):
            logits, k, v = step(x[:1, p:p + 1], torch.tensor([p]), k, v)
            assert torch.allclose(logits[0, 0], ref[0, p], atol=1e-5)


def test_litert_lm_layout_step_matches_transformers_and_writes_only_its_slots():
    """LiteRTLM (the *.kv.tflite / .litertlm graph): prefill 8 then 4 decode steps equal the full forward; each
    step changes only the cache slots of its positions (dynamic_update_slice)."""
    model = tiny_llama(layers=2)
    x = torch.randint(0, VOCAB, (1, 12))
    step = LiteRTLM(model, 16)
    with torch.no_grad():
        ref = model(x).logits
        cache = step.empty_cache()
        assert set(cache) == {"k_0", "v_0", "k_1", "v_1"} and cache["k_0"].shape == (1, 2, 16, 8)
        out = step(x[:, :8].int(), torch.arange(8, dtype=torch.int32), cache)
        assert torch.allclose(out["logits"], ref[:, :8], atol=1e-5)
        for p in range(8, 12):
            before = out["kv_cache"]
            out = step(x[:, p:p + 1].int(), torch.tensor([p], dtype=torch.int32), before)
            assert torch.allclose(out["logits"][0, 0], ref[0, p], atol=1e-5)
            changed = (out["kv_cache"]["k_1"] != before["k_1"]).any(-1).any(1)[0]      # (C,) slots written
            assert changed.nonzero().flatten().tolist() == [p]


def test_greedy_generation_agrees_between_fixed_and_cached_torch_sessions():
    model = tiny_llama(layers=2)
    prompt = np.arange(2, 8)
    fixed = greedy_generate(TorchSession(FixedLengthLM(model, 16), "fixed"), prompt, 6)
    cached = greedy_generate(TorchSession(CachedLM(model, 16), "kv"), prompt, 6)
    with torch.no_grad():
        ref = model.generate(torch.tensor([prompt]), max_new_tokens=6, do_sample=False, pad_token_id=1)[0, 6:]
    assert fixed == cached == ref.tolist()


@pytest.mark.export
def test_onnx_files_fixed_kv_and_int8_verify_and_profile(tmp_path):
    from edgekd.lm import export as ex
    from edgekd.lm.profile import profile_session
    from edgekd.lm.runtime import open_lm_session
    from edgekd.lm.verify import verify_file

    model = tiny_llama(layers=2)
    blocks = torch.randint(0, VOCAB, (3, 12))
    fixed = ex.export_onnx(model, 12, tmp_path / "s.onnx")
    files = {"fixed": fixed, "kv": ex.export_onnx_kv(model, 16, tmp_path / "s.kv.onnx"),
             "int8": ex.quantize_onnx_int8(fixed, tmp_path / "s.int8.onnx")}
    for name, path in files.items():
        session = open_lm_session(path)
        ref = TorchSession(FixedLengthLM(model, 12), "fixed") if session.kind == "fixed" else \
            TorchSession(CachedLM(model, 16), "kv")
        r = verify_file(session, ref, blocks, new_tokens=4, prompt_len=8)
        assert r["max_abs_logit_diff"] < (0.05 if name == "int8" else 1e-4), name
        assert r["perplexity"] == pytest.approx(r["reference_perplexity"], rel=0.03 if name == "int8" else 1e-4)
        if name != "int8":
            assert r["greedy_agreement"] == 1.0
        p = profile_session(session, 8, decode_tokens=2, repeats=2)
        assert p["decode_tokens_per_s"]["p50"] > 0 and p["ttft_ms"]["p50"] > 0


@pytest.mark.export
def test_tflite_files_fixed_kv_signatures_and_int8(tmp_path):
    from edgekd.lm import export as ex
    from edgekd.lm.runtime import open_lm_session
    from edgekd.lm.verify import verify_file

    model = tiny_llama(layers=1)
    blocks = torch.randint(0, VOCAB, (2, 12))
    fixed = ex.export_tflite(model, 12, tmp_path / "s.tflite")
    kv = ex.export_tflite_kv(model, 16, 8, tmp_path / "s.kv.tflite")
    int8 = ex.quantize_tflite_int8(fixed, tmp_path / "s.int8.tflite")
    assert int8.stat().st_size < fixed.stat().st_size
    session = open_lm_session(kv)
    assert (session.kind, session.prefill_len, session.max_len, session.layers) == ("kv", 8, 16, 1)
    assert set(session.interp.get_signature_list()) == {"prefill_8", "decode"}
    r = verify_file(session, TorchSession(CachedLM(model, 16), "kv"), blocks, new_tokens=4)
    assert r["max_abs_logit_diff"] < 1e-4 and r["greedy_agreement"] == 1.0
    r = verify_file(open_lm_session(fixed), TorchSession(FixedLengthLM(model, 12), "fixed"), blocks, new_tokens=2)
    assert r["max_abs_logit_diff"] < 1e-4
    tokenizer_folder(tmp_path / "tok")
    bundle = ex.package_litertlm(kv, tmp_path / "tok" / "tokenizer.json", tmp_path / "s.litertlm", context_length=16,
                                 stop_token_ids=[1])
    assert bundle.stat().st_size > kv.stat().st_size


@pytest.mark.export
def test_prefill_decode_tflite_without_the_litert_lm_inputs_is_one_clear_error(tmp_path):
    """A KV-cache .tflite of the earlier edgekd layout (positional args_0..3) is refused with what to do."""
    import litert_torch

    from edgekd.errors import EdgeKDError
    from edgekd.lm.runtime import open_lm_session

    class Step(torch.nn.Module):
        def forward(self, ids, positions, k, v):
            return ids.float().sum() + positions.float().sum() + k, v

    args = (torch.zeros(1, 2, dtype=torch.int32), torch.arange(2, dtype=torch.int32), torch.zeros(1, 2, 4, 2),
            torch.zeros(1, 2, 4, 2))
    path = tmp_path / "old.kv.tflite"
    litert_torch.signature("prefill", Step(), args).signature("decode", Step(), args).convert().export(str(path))
    with pytest.raises(EdgeKDError, match=r"old.kv.tflite: a prefill/decode .tflite without the LiteRT-LM inputs "
                                          r"\(tokens, input_pos, .*re-export it"):
        open_lm_session(path)


def test_embedding_table_is_stored_int8_with_one_scale_per_row():
    """onnxruntime's Gather quantization gives a whole embedding table one scale; per row, a row of small values
    keeps its resolution. Hand values: rows [1, -0.5] and [100, 50], scales 1/127 and 100/127."""
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    from edgekd.lm.export import embedding_per_row_int8

    table = np.array([[1.0, -0.5], [100.0, 50.0]], np.float32)
    graph = helper.make_graph([helper.make_node("Gather", ["table", "ids"], ["out"], axis=0)], "g",
                              [helper.make_tensor_value_info("ids", TensorProto.INT64, [3])],
                              [helper.make_tensor_value_info("out", TensorProto.FLOAT, [3, 2])],
                              [numpy_helper.from_array(table, "table")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    assert embedding_per_row_int8(model) == 1
    onnx.checker.check_model(model)
    assert "table" not in {i.name for i in model.graph.initializer}  # the float table is gone
    q = numpy_helper.to_array(next(i for i in model.graph.initializer if i.name == "table_int8_rows"))
    assert q.dtype == np.int8 and q.tolist() == [[127, -64], [127, 64]]  # -63.5 and 63.5 round half to even
    out = ort.InferenceSession(model.SerializeToString()).run(None, {"ids": np.array([1, 0, 1])})[0]
    np.testing.assert_allclose(out, [[100.0, 64 * 100 / 127], [1.0, -64 / 127], [100.0, 64 * 100 / 127]],
                               rtol=1e-6)
