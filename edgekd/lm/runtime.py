"""Run an exported student LM in its own runtime behind one small interface, so verify and profile treat
.tflite (LiteRT), .onnx (onnxruntime) and the torch reference alike.

A session is either fixed-length (`kind == "fixed"`: `forward(ids (1, T)) -> logits (1, T, V)`) or a KV-cache step
(`kind == "kv"`: `step(ids (1, S), positions (S,), k, v) -> (logits (1, S, V), k, v)`; `prefill_len` is the S its
prefill accepts, None when any S works; `max_len` the positions the cache holds). Inputs and outputs are numpy
arrays; `k`, `v` are whatever `empty_cache(session)` starts with: one (L, kv, C, hd) array each for the torch
CachedLM reference, per-layer lists of (1, kv, C, hd) arrays for the fixed-capacity LiteRT-LM layout of
`*.kv.tflite`, per-layer lists of (1, kv, P, hd) arrays for the Hugging Face past-key-values layout of `*.kv.onnx`
(which grows by S each step, so positions must continue it).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from edgekd.errors import EdgeKDError


class TorchSession:
    """The torch reference: a FixedLengthLM or CachedLM module."""

    runtime = "torch"

    def __init__(self, module, kind: str, prefill_len: int | None = None):
        self.module, self.kind, self.prefill_len = module.eval(), kind, prefill_len
        self.seq_len = getattr(module, "seq_len", None)
        self.cache_shape = module.cache_shape() if kind == "kv" else None
        self.max_len = self.cache_shape[2] if kind == "kv" else None

    def forward(self, ids):
        import torch

        with torch.no_grad():
            return self.module(torch.as_tensor(ids, dtype=torch.long)).numpy()

    def step(self, ids, positions, k, v):
        import torch

        with torch.no_grad():
            out = self.module(torch.as_tensor(ids, dtype=torch.long), torch.as_tensor(positions, dtype=torch.long),
                              torch.as_tensor(k), torch.as_tensor(v))
        return tuple(t.numpy() for t in out)


class LiteRTSession:
    """LiteRT Interpreter: a fixed-length file (one signature, ids -> logits) or a KV-cache file in the LiteRT-LM
    layout (`prefill_<P>` and `decode` signatures; edgekd.lm.export)."""

    runtime = "litert"

    def __init__(self, path: Path, threads: int = 1):
        from ai_edge_litert.interpreter import Interpreter

        self.interp = Interpreter(str(path), num_threads=threads)
        sigs = self.interp.get_signature_list()
        prefill = next((n for n in sigs if n.startswith("prefill")), None)
        if prefill and "decode" in sigs:
            self.kind = "kv"
            self.runners = {"prefill": self.interp.get_signature_runner(prefill),
                            "decode": self.interp.get_signature_runner("decode")}
            details = self.runners["prefill"].get_input_details()
            if not {"tokens", "input_pos", "kv_cache_k_0"} <= set(details):
                raise EdgeKDError(f"{Path(path).name}: a prefill/decode .tflite without the LiteRT-LM inputs "
                                  f"(tokens, input_pos, kv_cache_k_<i>/kv_cache_v_<i>; it has {sorted(details)}); "
                                  f"re-export it with edgekd.lm.export.export_tflite_kv")
            self.layers = sum(1 for n in details if n.startswith("kv_cache_k_"))
            self.prefill_len = int(details["tokens"]["shape"][1])
            self.cache_shape = tuple(int(d) for d in details["kv_cache_k_0"]["shape"])   # (1, kv, C, hd)
            self.max_len, self.seq_len = self.cache_shape[2], None
        else:
            self.kind = "fixed"
            self.runner = self.interp.get_signature_runner()
            self.seq_len = int(self.runner.get_input_details()["args_0"]["shape"][1])
            self.prefill_len = self.cache_shape = self.max_len = None

    def forward(self, ids):
        return self.runner(args_0=np.asarray(ids, np.int32))["output_0"]

    def empty_cache(self) -> tuple[list[np.ndarray], list[np.ndarray]]:
        return ([np.zeros(self.cache_shape, np.float32) for _ in range(self.layers)],
                [np.zeros(self.cache_shape, np.float32) for _ in range(self.layers)])

    def step(self, ids, positions, k, v):
        runner = self.runners["decode" if np.shape(ids)[1] == 1 else "prefill"]
        feeds = {"tokens": np.asarray(ids, np.int32), "input_pos": np.asarray(positions, np.int32)}
        for i in range(self.layers):
            feeds[f"kv_cache_k_{i}"], feeds[f"kv_cache_v_{i}"] = k[i], v[i]
        out = runner(**feeds)
        return (out["logits"], [out[f"kv_cache_k_{i}"] for i in range(self.layers)],
                [out[f"kv_cache_v_{i}"] for i in range(self.layers)])


class OrtSession:
    """onnxruntime: a fixed-length file (`ids` -> `logits`) or a Hugging Face past-key-values decoder."""

    runtime = "onnxruntime"

    def __init__(self, path: Path, threads: int = 1):
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        self.sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        inputs = {i.name: i for i in self.sess.get_inputs()}
        self.prefill_len = self.cache_shape = self.max_len = self.seq_len = None
        if "past_key_values.0.key" in inputs:
            self.kind = "kv"
            self.past = [n for n in inputs if n.startswith("past_key_values.")]
            self.present = [n.replace("past_key_values", "present") for n in self.past]
            shape = inputs["past_key_values.0.key"].shape                    # (batch, kv, past, hd)
            self.kv_shape = (1, int(shape[1]), 0, int(shape[3]))
            meta = self.sess.get_modelmeta().custom_metadata_map
            self.max_len = int(meta["edgekd.max_len"]) if "edgekd.max_len" in meta else None
        elif "ids" in inputs:
            self.kind = "fixed"
            self.seq_len = inputs["ids"].shape[1]
        else:
            raise EdgeKDError(f"{Path(path).name}: not an edgekd LM file (inputs {sorted(inputs)}); expected `ids` or "
                              f"the past_key_values layout")

    def forward(self, ids):
        return self.sess.run(["logits"], {"ids": np.asarray(ids, np.int64)})[0]

    def empty_cache(self) -> tuple[list[np.ndarray], list[np.ndarray]]:
        layers = len(self.past) // 2
        return ([np.zeros(self.kv_shape, np.float32) for _ in range(layers)],
                [np.zeros(self.kv_shape, np.float32) for _ in range(layers)])

    def step(self, ids, positions, k, v):
        ids, positions = np.asarray(ids, np.int64), np.asarray(positions, np.int64)
        past_len = k[0].shape[2]
        if positions[0] != past_len:
            raise EdgeKDError(f"the past-key-values cache holds {past_len} positions; the next step must start at "
                              f"position {past_len}, got {int(positions[0])}")
        feeds = {"input_ids": ids, "attention_mask": np.ones((1, past_len + ids.shape[1]), np.int64),
                 "position_ids": positions[None]}
        for i in range(len(k)):
            feeds[f"past_key_values.{i}.key"], feeds[f"past_key_values.{i}.value"] = k[i], v[i]
        out = self.sess.run(["logits", *self.present], feeds)
        return out[0], out[1::2], out[2::2]


def open_lm_session(path: str | Path, threads: int = 1):
    """A session for an exported LM file, chosen by suffix."""
    path = Path(path)
    if path.suffix == ".tflite":
        return LiteRTSession(path, threads)
    if path.suffix == ".onnx":
        return OrtSession(path, threads)
    raise EdgeKDError(f"no LM runtime for {path.name}: expected .tflite or .onnx")


def empty_cache(session):
    """The (k, v) state a KV-cache session starts from (see the module docstring)."""
    if hasattr(session, "empty_cache"):
        return session.empty_cache()
    return np.zeros(session.cache_shape, np.float32), np.zeros(session.cache_shape, np.float32)


def block_logits(session, block: np.ndarray) -> np.ndarray:
    """(T, V) next-token logits for one block of T ids: one forward (fixed), or prefill of the whole block (kv)."""
    block = np.asarray(block)[None]
    if session.kind == "fixed":
        return session.forward(block)[0]
    k, v = empty_cache(session)
    return session.step(block, np.arange(block.shape[1]), k, v)[0][0]


def greedy_generate(session, prompt: np.ndarray, new_tokens: int, pad_id: int = 0) -> list[int]:
    """Greedy continuation of a 1-D `prompt`: a KV-cache loop (prefill then decode) or, for a fixed-length
    file, one full forward per new token over the right-padded window (causal attention ignores the padding)."""
    tokens = [int(t) for t in prompt]
    if session.kind == "fixed":
        t = session.seq_len
        for _ in range(new_tokens):
            window = tokens[-t:]
            ids = np.full((1, t), pad_id, np.int64)
            ids[0, :len(window)] = window
            tokens.append(int(session.forward(ids)[0, len(window) - 1].argmax()))
        return tokens[len(prompt):]
    k, v = empty_cache(session)
    logits, k, v = session.step(np.asarray(tokens)[None], np.arange(len(tokens)), k, v)
    tokens.append(int(logits[0, -1].argmax()))
    for _ in range(new_tokens - 1):
        pos = len(tokens) - 1
        logits, k, v = session.step(np.asarray([[tokens[-1]]]), np.asarray([pos]), k, v)
        tokens.append(int(logits[0, -1].argmax()))
    return tokens[len(prompt):]
