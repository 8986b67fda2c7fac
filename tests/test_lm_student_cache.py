"""Students from a tiny random teacher, the top-k cache round trip, training and sequence-level KD."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from edgekd.errors import EdgeKDError
from edgekd.lm.corpus import Document, split_by_year, text_files, token_blocks
from edgekd.lm.methods import get_method, method_from_dict
from edgekd.lm.objectives import TokenObjective, parse_terms
from edgekd.lm.seqkd import teacher_continuations
from edgekd.lm.student import StudentSpec, build_student, select_layers
from edgekd.lm.topk_cache import TopKCache, build_topk_cache
from edgekd.lm.train import LMTrainConfig, train_lm
from tests.lm_fixtures import VOCAB, WordTokenizer, tiny_llama


def test_select_layers_spreads_first_to_last():
    assert select_layers(30, 4) == [0, 10, 19, 29]
    assert select_layers(4, 4) == [0, 1, 2, 3]
    with pytest.raises(EdgeKDError):
        select_layers(4, 5)


def test_teacher_init_with_all_layers_reproduces_the_teacher():
    teacher = tiny_llama()
    student = build_student(teacher, StudentSpec(layers=4, hidden=None, init="teacher")).eval()
    x = torch.randint(0, VOCAB, (2, 10))
    with torch.no_grad():
        assert torch.allclose(student(x).logits, teacher(x).logits, atol=1e-5)


def test_width_projection_and_fewer_heads_build_a_working_student():
    teacher = tiny_llama(hidden=64, heads=8, kv_heads=4, inter=128)
    student = build_student(teacher, StudentSpec(layers=2, hidden=32, init="teacher")).eval()
    assert (student.config.hidden_size, student.config.num_attention_heads) == (32, 4)
    assert student.config.num_attention_heads // student.config.num_key_value_heads <= 2
    with torch.no_grad():
        assert torch.isfinite(student(torch.randint(0, VOCAB, (1, 8))).logits).all()


def test_topk_cache_round_trip_is_memory_mapped_and_keyed(tmp_path):
    teacher = tiny_llama()
    blocks = torch.randint(0, VOCAB, (3, 8))
    cache = build_topk_cache(teacher, blocks, 5, tmp_path, teacher_fp="t", tokenizer_fp="tok", batch_size=2)
    assert isinstance(cache.values, np.memmap) and cache.values.dtype == np.float16
    assert cache.indices.dtype == np.int32 and cache.values.shape == (3, 8, 5)
    with torch.no_grad():
        ref = teacher(blocks).logits.topk(5, -1)
    got = cache[[2, 0]]
    assert torch.equal(got.indices, ref.indices[[2, 0]])
    assert torch.allclose(got.values, ref.values[[2, 0]], atol=1e-2)
    again = build_topk_cache(None, blocks, 5, tmp_path, teacher_fp="t", tokenizer_fp="tok")  # no teacher run
    assert again.path == cache.path and json.loads((cache.path / "meta.json").read_text())["k"] == 5
    other = build_topk_cache(teacher, blocks[:2], 5, tmp_path, teacher_fp="t", tokenizer_fp="tok")
    assert other.path != cache.path and len(TopKCache.open(other.path)) == 2
    bf16 = build_topk_cache(teacher, blocks, 5, tmp_path, teacher_fp="t", tokenizer_fp="tok", dtype=torch.bfloat16)
    assert bf16.path != cache.path and bf16.meta["dtype"] == "bfloat16"  # another compute precision, another cache
    assert (bf16[[0]].indices[..., 0] == cache[[0]].indices[..., 0]).float().mean() > 0.9
    with pytest.raises(EdgeKDError, match="dtype must be float32 or bfloat16"):
        build_topk_cache(teacher, blocks, 5, tmp_path, teacher_fp="t", tokenizer_fp="tok", dtype=torch.float16)


def test_kd_training_lowers_the_loss_and_seqkd_keeps_prompts(tmp_path):
    teacher = tiny_llama()
    blocks = torch.randint(0, VOCAB, (8, 12))
    cache = build_topk_cache(teacher, blocks, 8, tmp_path, teacher_fp="t", tokenizer_fp="tok")
    student = build_student(teacher, StudentSpec(layers=1, hidden=16))
    objective = TokenObjective(parse_terms([{"name": "forward_kl"}, {"name": "ce", "weight": 0.5}]))
    result = train_lm(student, blocks, objective, LMTrainConfig(steps=30, batch_size=4, lr=1e-2, warmup=2),
                      cache=cache)
    assert result["tokens"] == 30 * 4 * 12 and np.mean(result["curve"][-5:]) < np.mean(result["curve"][:5])
    gen, tps = teacher_continuations(teacher, blocks[:2], prompt_len=4, batch_size=2)
    assert gen.shape == (2, 12) and torch.equal(gen[:, :4], blocks[:2, :4]) and tps > 0


def test_corpus_blocks_split_and_user_files(tmp_path):
    (tmp_path / "a.txt").write_text("one two three four five")
    (tmp_path / "b.jsonl").write_text('{"text": "six seven"}\n\n{"text": "eight nine ten"}\n')
    docs = text_files([tmp_path])
    assert [d.name for d in docs] == ["a", "b:1", "b:3"]
    blocks = token_blocks(WordTokenizer(), docs, 4)
    assert blocks.shape == (3, 4) and blocks[1, 1].item() == 1  # EOS after the first document
    train, held = split_by_year([Document(str(y), "x", y) for y in (2001, 1999, 2000)], 1)
    assert [d.year for d in held] == [2001] and [d.year for d in train] == [1999, 2000]
    (tmp_path / "bad.jsonl").write_text("{not json}\n")
    with pytest.raises(EdgeKDError, match="bad.jsonl:1"):
        text_files([tmp_path / "bad.jsonl"])


def test_methods_resolve_and_reject_unknown():
    assert get_method("seqkd").text == "teacher" and not get_method("seqkd").needs_cache
    assert method_from_dict({"method": "forward_kl", "init": "teacher"}).init == "teacher"
    assert method_from_dict({"losses": [{"name": "reverse_kl"}]}).needs_cache
    with pytest.raises(EdgeKDError, match="choose from"):
        get_method("nope")


def test_seqkd_greedy_matches_transformers_generate():
    teacher = tiny_llama()
    blocks = torch.randint(2, VOCAB, (2, 10))
    ours, _ = teacher_continuations(teacher, blocks, prompt_len=4)
    with torch.no_grad():
        ref = teacher.generate(blocks[:, :4], attention_mask=torch.ones(2, 4, dtype=torch.long), max_new_tokens=6,
                               min_new_tokens=6, do_sample=False, pad_token_id=1)
    assert torch.equal(ours, ref)
    sampled, _ = teacher_continuations(teacher, blocks, prompt_len=4, temperature=1.0, seed=3)
    assert torch.equal(sampled[:, :4], blocks[:, :4]) and sampled.shape == blocks.shape
