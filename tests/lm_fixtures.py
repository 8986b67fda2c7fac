"""Tiny random-weight Llama models and a whitespace tokenizer for the LM tests (no files, no network)."""
from __future__ import annotations

import torch

VOCAB = 61
WORDS = "the people of this nation work build trade grow learn and hope for a better future together".split()


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


def tokenizer_folder(folder):
    """Save a word-level HF tokenizer over WORDS (id 1 = </s>) into `folder`."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    from edgekd.lm.teacher import import_transformers

    vocab = {"[UNK]": 0, "</s>": 1, **{w: i + 2 for i, w in enumerate(WORDS)}}
    tk = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    tk.pre_tokenizer = pre_tokenizers.Whitespace()
    fast = import_transformers().PreTrainedTokenizerFast(tokenizer_object=tk, unk_token="[UNK]", eos_token="</s>")
    fast.save_pretrained(folder)
