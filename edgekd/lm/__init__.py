"""Causal language-model distillation: a pretrained teacher (SmolLM2 from its GGUF, or any HF-format folder),
a small Llama student sharing its tokenizer, token-level KD objectives over a cached top-k teacher, export to
.tflite / ONNX / .litertlm, and verification and profiling of those files.

Modules (one concept each): `assets` (where the offline parts live), `corpus` (texts and token blocks),
`teacher` (loading the teacher and tokenizer), `student` (student configs and initialisation from the teacher),
`objectives` (token losses), `topk_cache` (the teacher's top-k logits on disk), `seqkd` (teacher-generated text),
`methods` (named method = init + objective + text), `train` (the training loop), `evaluate` (perplexity, greedy
generation), `workflow` (steps shared by stages and tools/bench_lm.py), `decoder` (export view of a Llama),
`export` (files), `runtime` (running those files), `litertlm` (the .litertlm in the LiteRT-LM runtime),
`verify`, `profile`, `recipe`, `stages` + `stage` (the causal_lm
pipeline stages and their declarations) and `report`. See docs/lm.md.
Heavy imports (transformers, litert, onnxruntime) happen inside functions.
"""
