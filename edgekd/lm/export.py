"""Files of a student LM: .tflite (litert-torch) and .onnx (torch.onnx), fixed-length or with an external KV cache,
and their int8 dynamic-range (int8 weights, float activations quantized on the fly) versions.

Graph shapes: fixed-length files take ids (1, T) and return logits (1, T, V). `*.kv.tflite` is in the LiteRT-LM
layout (litert_torch.generative's names): signatures `prefill_<P>` (S = P tokens) and `decode` (S = 1) take
`tokens` (1, S) int32, `input_pos` (S,) int32 and `kv_cache_k_<i>`, `kv_cache_v_<i>` (1, kv, C, hd) per layer, and
return `logits` (1, S, V) and the updated `kv_cache_k_<i>`, `kv_cache_v_<i>` (written with DYNAMIC_UPDATE_SLICE, so
LiteRT-LM updates its cache buffers in place); the `.litertlm` built from it runs in the LiteRT-LM runtime.
`*.kv.onnx` uses the Hugging Face past-key-values layout (`input_ids`, `attention_mask`, `position_ids`,
`past_key_values.{i}.key|value` -> `logits`, `present.{i}.key|value`, dynamic batch and lengths) that
onnxruntime-genai-style loops drive. See `edgekd.lm.decoder`. Each function writes atomically and returns the path;
converter failures propagate with the converter's own message (the stage records it).
"""
from __future__ import annotations

import contextlib
import io
import os
from pathlib import Path

import torch

from edgekd.fileio import atomic_path
from edgekd.lm.decoder import FixedLengthLM, LiteRTLM


@contextlib.contextmanager
def _quiet():
    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
        yield out


def kv_inputs(module: LiteRTLM, steps: int) -> dict[str, object]:
    """Sample keyword inputs of one LiteRT-LM step of `steps` tokens (the signature's input names)."""
    return {"tokens": torch.zeros(1, steps, dtype=torch.int32), "input_pos": torch.arange(steps, dtype=torch.int32),
            "kv_cache": module.empty_cache()}


def export_tflite(model, seq_len: int, path: str | os.PathLike) -> Path:
    """Fixed-length .tflite of a transformers Llama model (fp32)."""
    import litert_torch

    module = FixedLengthLM(model.float().eval(), seq_len).eval()
    with _quiet():
        edge = litert_torch.convert(module, (torch.zeros(1, seq_len, dtype=torch.long),))
    with atomic_path(path) as tmp, _quiet():
        edge.export(str(tmp))
    return Path(path)


def export_tflite_kv(model, cache_len: int, prefill_len: int, path: str | os.PathLike) -> Path:
    """.tflite with `prefill_<prefill_len>` and `decode` (1 token) signatures over an external KV cache of
    `cache_len` slots, in the LiteRT-LM layout (module docstring)."""
    import litert_torch

    module = LiteRTLM(model.float().eval(), cache_len).eval()
    with _quiet():
        edge = (litert_torch.signature(f"prefill_{prefill_len}", module, sample_kwargs=kv_inputs(module, prefill_len))
                .signature("decode", module, sample_kwargs=kv_inputs(module, 1)).convert())
    with atomic_path(path) as tmp, _quiet():
        edge.export(str(tmp))
    return Path(path)


def export_onnx(model, seq_len: int, path: str | os.PathLike, opset: int = 18) -> Path:
    """Fixed-length .onnx (fp32): input `ids` (1, T), output `logits` (1, T, V)."""
    module = FixedLengthLM(model.float().eval(), seq_len).eval()
    with atomic_path(path) as tmp, _quiet():
        torch.onnx.export(module, (torch.zeros(1, seq_len, dtype=torch.long),), str(tmp), input_names=["ids"],
                          output_names=["logits"], opset_version=opset, dynamo=False)
    return Path(path)


def export_onnx_kv(model, max_len: int, path: str | os.PathLike, opset: int = 18) -> Path:
    """.onnx decoder step in the Hugging Face / onnxruntime-genai layout: inputs `input_ids` (B, S),
    `attention_mask` (B, P+S), `position_ids` (B, S), `past_key_values.{i}.key|value` (B, kv, P, hd); outputs
    `logits` (B, S, V) and `present.{i}.key|value` (B, kv, P+S, hd). Batch, S and P are dynamic (P = 0 on the first
    call: empty past tensors); positions must stay below `max_len`."""
    from edgekd.lm.decoder import PastKeyValuesLM, past_names

    module = PastKeyValuesLM(model.float().eval(), max_len).eval()
    layers, kv, hd = len(module.layers), module.kv_heads, module.head_dim
    past, present = past_names(layers)
    s, p = 3, 2  # trace with a non-empty past so the concatenation is traced with both parts
    args = (torch.zeros(1, s, dtype=torch.long), torch.ones(1, p + s, dtype=torch.long),
            torch.arange(p, p + s)[None], *[torch.zeros(1, kv, p, hd) for _ in past])
    axes = {"input_ids": {0: "batch_size", 1: "sequence_length"},
            "attention_mask": {0: "batch_size", 1: "total_sequence_length"},
            "position_ids": {0: "batch_size", 1: "sequence_length"},
            "logits": {0: "batch_size", 1: "sequence_length"},
            **{n: {0: "batch_size", 2: "past_sequence_length"} for n in past},
            **{n: {0: "batch_size", 2: "total_sequence_length"} for n in present}}
    with atomic_path(path) as tmp, _quiet():
        torch.onnx.export(module, args, str(tmp), input_names=["input_ids", "attention_mask", "position_ids", *past],
                          output_names=["logits", *present], opset_version=opset, dynamo=False, dynamic_axes=axes)
        _onnx_metadata(tmp, {"edgekd.max_len": str(max_len), "edgekd.layout": "past_key_values"})
    return Path(path)


def _onnx_metadata(path: Path, props: dict[str, str]) -> None:
    """Add metadata_props to an .onnx file in place (read back by the runtime, e.g. the cache's max length)."""
    import onnx

    model = onnx.load(str(path))
    for key, value in props.items():
        model.metadata_props.add(key=key, value=value)
    onnx.save(model, str(path))


def quantize_tflite_int8(src: str | os.PathLike, dst: str | os.PathLike) -> Path:
    """Dynamic-range int8 .tflite (ai-edge-quantizer `dynamic_wi8_afp32`: per-channel int8 weights)."""
    from ai_edge_quantizer import quantizer, recipe

    qt = quantizer.Quantizer(str(src))
    qt.load_quantization_recipe(recipe.dynamic_wi8_afp32())
    with _quiet():
        result = qt.quantize()
    with atomic_path(dst) as tmp:
        tmp.write_bytes(bytes(result.quantized_model))
    return Path(dst)


def quantize_onnx_int8(src: str | os.PathLike, dst: str | os.PathLike) -> Path:
    """Dynamic int8 .onnx: onnxruntime `quantize_dynamic` for the MatMuls (int8 per-channel weights, activations
    quantized at run time) and the token embedding stored int8 with one scale per row (`embedding_per_row_int8`).

    onnxruntime's own Gather quantization gives the whole 49152 x 256 table one uint8 scale: on the recipe's
    student that alone took int8 perplexity from +1.5 % to +3.1 % over fp32 (293.2 -> 302.2).
    """
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    with atomic_path(dst) as tmp, _quiet():
        quantize_dynamic(str(src), str(tmp), weight_type=QuantType.QInt8, per_channel=True,
                         op_types_to_quantize=["MatMul"])
        model = onnx.load(str(tmp))
        embedding_per_row_int8(model)
        onnx.save(model, str(tmp))
    return Path(dst)


def embedding_per_row_int8(model) -> int:
    """Replace each Gather from a 2-D float initializer (a token embedding) by Gather from an int8 copy, scaled by
    Gather of its per-row scales (max |row| / 127, symmetric). Edits `model` in place; returns tables replaced."""
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper

    graph = model.graph
    inits = {i.name: i for i in graph.initializer}
    users: dict[str, int] = {}
    for n in graph.node:
        for x in n.input:
            users[x] = users.get(x, 0) + 1
    replaced, nodes = 0, []
    for n in graph.node:
        table = inits.get(n.input[0]) if n.op_type == "Gather" and n.input else None
        axis = next((a.i for a in n.attribute if a.name == "axis"), 0)
        if table is None or len(table.dims) != 2 or axis != 0 or table.data_type != TensorProto.FLOAT:
            nodes.append(n)
            continue
        w = numpy_helper.to_array(table)
        scale = np.maximum(np.abs(w).max(axis=1, keepdims=True), 1e-12) / 127.0
        q = np.clip(np.rint(w / scale), -127, 127).astype(np.int8)
        name = table.name
        graph.initializer.extend([numpy_helper.from_array(q, f"{name}_int8_rows"),
                                  numpy_helper.from_array(scale.astype(np.float32), f"{name}_row_scale")])
        out = n.output[0]
        nodes += [helper.make_node("Gather", [f"{name}_int8_rows", n.input[1]], [f"{out}_int8"], axis=0),
                  helper.make_node("Cast", [f"{out}_int8"], [f"{out}_rows"], to=TensorProto.FLOAT),
                  helper.make_node("Gather", [f"{name}_row_scale", n.input[1]], [f"{out}_scale"], axis=0),
                  helper.make_node("Mul", [f"{out}_rows", f"{out}_scale"], [out])]
        if users.get(name, 0) == 1:
            graph.initializer.remove(table)
        replaced += 1
    del graph.node[:]
    graph.node.extend(nodes)
    return replaced


def package_litertlm(kv_tflite: str | os.PathLike, tokenizer_json: str | os.PathLike, path: str | os.PathLike, *,
                     context_length: int, stop_token_ids: list[int], start_token_id: int | None = None) -> Path:
    """A `.litertlm` (LiteRT-LM container: the KV-cache .tflite, the HF tokenizer.json and LLM metadata) built with
    litert-lm-builder through litert_torch.generative. `litert-lm-peek` reads it back. Its signatures keep
    edgekd's input order (ids, positions, k_cache, v_cache), not litert_torch.generative's per-layer cache names,
    so the LiteRT-LM runtime's own loader is not expected to drive it as is (that runtime is not installed here)."""
    import tempfile

    from litert_torch.generative.utilities.litertlm_builder import build_litertlm

    path = Path(path)
    with tempfile.TemporaryDirectory(prefix="edgekd-litertlm-") as work, _quiet():
        out_dir = Path(work) / "out"
        out_dir.mkdir()
        build_litertlm(tflite_model_path=str(kv_tflite), workdir=work, output_path=str(out_dir),
                       context_length=context_length, hf_tokenizer_model_path=str(tokenizer_json),
                       start_token_id=start_token_id, stop_token_ids=list(stop_token_ids), llm_model_type="generic")
        (built,) = out_dir.glob("*.litertlm")
        with atomic_path(path) as tmp:
            tmp.write_bytes(built.read_bytes())
    return path
