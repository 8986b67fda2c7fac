"""The .litertlm runs in the LiteRT-LM runtime (PyPI litert-lm-api, extra `litertlm`): perplexity and greedy
generation against the torch student, LiteRT-LM's own benchmark, and bundle verify running it."""
from __future__ import annotations

import json
import zipfile

import numpy as np
import pytest
import torch

from edgekd.lm import litertlm
from tests.lm_fixtures import tiny_llama, tokenizer_folder


def test_without_the_runtime_the_container_is_checked_and_reported_not_run(monkeypatch, tmp_path):
    from edgekd.bundle.verify import BundleReport
    from edgekd.errors import EdgeKDError
    from edgekd.lm.bundle import _run_litertlm

    monkeypatch.setattr(litertlm, "available", lambda: False)
    row: dict = {}
    _run_litertlm(BundleReport(archive=str(tmp_path / "b.zip")), tmp_path / "s.litertlm", row)
    assert row["ok"] and "not run here: litert-lm-api not installed" in row["runtime"]
    with pytest.raises(EdgeKDError, match=r"LiteRT-LM runtime is not installed: pip install 'edgekd\[litertlm\]'"):
        litertlm.open_engine(tmp_path / "s.litertlm")


@pytest.mark.export
def test_litertlm_verifies_and_profiles_in_litert_lm(tmp_path, monkeypatch):
    pytest.importorskip("litert_lm", reason=litertlm.INSTALL_HINT)
    monkeypatch.setenv("EDGEKD_CACHE", str(tmp_path / "cache"))
    from edgekd.bundle import verify_bundle
    from edgekd.lm import export as ex
    from edgekd.lm.bundle import make_lm_bundle
    from edgekd.lm.decoder import CachedLM
    from edgekd.lm.runtime import TorchSession

    model = tiny_llama(layers=2)
    kv = ex.export_tflite_kv(model, 16, 8, tmp_path / "student.kv.tflite")
    tokenizer_folder(tmp_path / "tok")
    tok = tmp_path / "tok" / "tokenizer.json"
    path = ex.package_litertlm(kv, tok, tmp_path / "student.litertlm", context_length=16, stop_token_ids=[1])
    blocks = torch.randint(2, 19, (3, 12), generator=torch.Generator().manual_seed(0))   # ids of real words
    r = litertlm.verify_litertlm(path, TorchSession(CachedLM(model, 16), "kv"), blocks, new_tokens=4, prompt_len=6)
    assert (r["runtime"], r["blocks_scored"], r["blocks_skipped"]) == ("litert-lm", 3, 0)
    # LiteRT-LM 0.18.1's CPU path differs from fp32 torch by up to ~0.1 in a token's log-probability on this
    # random model (the LiteRT Interpreter runs the same .tflite to 1e-7): perplexity within 2 %, greedy equal.
    assert r["max_abs_logprob_diff"] < 0.25
    assert r["perplexity"] == pytest.approx(r["reference_perplexity"], rel=0.02)
    assert r["greedy_agreement"] == 1.0
    from edgekd.lm.runtime import open_lm_session   # the Interpreter on the same .tflite as reference (prefill 8)

    by_litert = litertlm.verify_litertlm(path, open_lm_session(kv), blocks[:, :8], new_tokens=4)
    assert by_litert["greedy_agreement"] == 1.0 and by_litert["blocks_scored"] == 3
    p = litertlm.profile_litertlm(path, prompt_len=6, decode_tokens=4, repeats=2)
    assert p["timed_tokens"] == {"prefill": 6, "decode": 4}
    assert p["decode_tokens_per_s"]["p50"] > 0 and np.isfinite(p["ttft_ms"]["p90"])
    # LiteRT-LM's XNNPACK weight caches go to edgekd's cache folder, not beside the file (a run's export folder)
    assert not [f.name for f in tmp_path.iterdir() if "xnnpack_cache" in f.name]
    assert list((tmp_path / "cache" / "litertlm-xnnpack").iterdir())
    bundle = make_lm_bundle({"student.litertlm": path}, tok, {}, tmp_path / "b.zip", name="tiny",
                            special_tokens={"eos_token_ids": [1]})
    rows = {m["name"]: m for m in verify_bundle(bundle).models}
    assert rows["models/student.litertlm"]["runtime"] == "litert-lm" and rows["models/student.litertlm"]["ok"]
    with zipfile.ZipFile(bundle) as zf:
        assert json.loads(zf.read("lm_config.json"))["files"]["models/student.litertlm"]["runtime"] == "litert-lm"
