"""Tiny random-weight Llama models and a whitespace tokenizer for the LM tests (no files, no network)."""
from __future__ import annotations

import torch

VOCAB = 61


def tiny_llama(layers: int = 4, hidden: int = 32, heads: int = 4, kv_heads: int = 2, inter: int = 64, seed: int = 0):
    from edgekd.lm.teacher import import_transformers

    tf = import_transformers()
    torch.manual_seed(seed)
    cfg = tf.LlamaConfig(vocab_size=VOCAB, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
                         num_key_value_heads=kv_heads, intermediate_size=inter, tie_word_embeddings=True,
                         rope_theta=10000.0, eos_token_id=1, bos_token_id=0, max_position_embeddings=128)
    return tf.LlamaForCausalLM(cfg).eval()


class WordTokenizer:
    """Maps each whitespace word to a stable id in [2, VOCAB); id 1 is EOS."""

    eos_token_id = 1

    def __call__(self, text: str, add_special_tokens: bool = False):
        return {"input_ids": [2 + sum(map(ord, w)) % (VOCAB - 2) for w in text.split()]}

    def get_vocab(self):
        return {f"w{i}": i for i in range(VOCAB)}
