"""Students that share the teacher's tokenizer: small Llama decoders (transformers' LlamaForCausalLM), built from
scratch or initialised from the teacher.

Initialisation from the teacher:
- layer selection (DistilBERT): keep `layers` of the teacher's blocks, evenly spaced (first and last included),
  with the teacher's embeddings, final norm and width;
- width reduction by projection: when `hidden` is smaller than the teacher's, the residual stream is projected
  onto the top principal directions of the teacher's token embeddings (P: d x h, orthonormal columns); each
  block keeps whole attention heads (the first heads of each kept key/value group) and the MLP channels with the
  largest weight norms. RMSNorm gains are folded into the next projection (the norm of the projected stream is
  not the norm of the original one, so this is an initialisation, not an equivalent model).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn

from edgekd.errors import EdgeKDError
from edgekd.lm.teacher import import_transformers


@dataclass(frozen=True)
class StudentSpec:
    """A student's shape; `hidden=None` keeps the teacher's width. `init`: 'scratch' or 'teacher'."""

    layers: int = 4
    hidden: int | None = 256
    heads: int | None = None          # None: hidden // teacher head_dim
    kv_heads: int | None = None       # None: keep the teacher's query/key-value group ratio where it divides
    intermediate: int | None = None   # None: teacher ratio (intermediate / hidden) times hidden
    init: str = "scratch"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def student_config(teacher_config, spec: StudentSpec):
    """A LlamaConfig for `spec`, inheriting vocabulary, RoPE, norm epsilon and tied embeddings from the teacher."""
    tf = import_transformers()
    t = teacher_config
    head_dim = getattr(t, "head_dim", None) or t.hidden_size // t.num_attention_heads
    hidden = spec.hidden or t.hidden_size
    heads = spec.heads or max(1, hidden // head_dim)
    group = max(1, t.num_attention_heads // t.num_key_value_heads)
    # fewest key/value heads that keep at most the teacher's queries per group (so teacher heads can be reused)
    kv = spec.kv_heads or next(k for k in range(1, heads + 1) if heads % k == 0 and heads // k <= group)
    if heads % kv:
        raise EdgeKDError(f"student heads ({heads}) must be a multiple of kv_heads ({kv})")
    if spec.layers < 1:
        raise EdgeKDError(f"student layers must be >= 1, got {spec.layers}")
    inter = spec.intermediate or int(round(t.intermediate_size * hidden / t.hidden_size / 64)) * 64 or 64
    cfg = t.to_dict()
    cfg.update(hidden_size=hidden, num_hidden_layers=spec.layers, num_attention_heads=heads,
               num_key_value_heads=kv, intermediate_size=inter, head_dim=head_dim)
    for key in ("_name_or_path", "architectures", "quantization_config", "torch_dtype", "dtype",
                "transformers_version"):
        cfg.pop(key, None)
    return tf.LlamaConfig(**cfg)


def build_student(teacher, spec: StudentSpec, seed: int = 0):
    """A LlamaForCausalLM for `spec`: random init (seeded) or initialised from `teacher` (see module docstring)."""
    tf = import_transformers()
    config = student_config(teacher.config, spec)
    torch.manual_seed(seed)
    student = tf.LlamaForCausalLM(config)
    if spec.init == "teacher":
        init_from_teacher(student, teacher)
    elif spec.init != "scratch":
        raise EdgeKDError(f"student init must be 'scratch' or 'teacher', got {spec.init!r}")
    return student.float().train()


def select_layers(n_teacher: int, n_student: int) -> list[int]:
    """Evenly spaced teacher block indices, first and last included (n_student of n_teacher)."""
    if not 1 <= n_student <= n_teacher:
        raise EdgeKDError(f"student layers must be between 1 and the teacher's {n_teacher}, got {n_student}")
    if n_student == 1:
        return [n_teacher - 1]
    return [round(i * (n_teacher - 1) / (n_student - 1)) for i in range(n_student)]


def embedding_projection(embeddings: torch.Tensor, hidden: int) -> torch.Tensor:
    """(d, hidden) orthonormal columns: the top principal directions of the (V, d) embedding rows."""
    centred = embeddings.float() - embeddings.float().mean(0, keepdim=True)
    _, _, vh = torch.linalg.svd(centred, full_matrices=False)
    return vh[:hidden].T.contiguous()


@torch.no_grad()
def init_from_teacher(student, teacher) -> list[int]:
    """Copy (or project) the teacher's weights into `student` in place; returns the teacher layers used."""
    s_cfg, t_cfg = student.config, teacher.config
    if s_cfg.vocab_size != t_cfg.vocab_size:
        raise EdgeKDError("student and teacher must share the vocabulary to initialise from the teacher")
    layers = select_layers(t_cfg.num_hidden_layers, s_cfg.num_hidden_layers)
    t_emb = teacher.get_input_embeddings().weight.float()
    same_width = s_cfg.hidden_size == t_cfg.hidden_size
    proj = None if same_width else embedding_projection(t_emb, s_cfg.hidden_size)
    student.get_input_embeddings().weight.copy_(t_emb if same_width else t_emb @ proj)
    if not s_cfg.tie_word_embeddings:
        head = teacher.get_output_embeddings().weight.float()
        student.get_output_embeddings().weight.copy_(head if same_width else head @ proj)
    t_norm = teacher.model.norm.weight.float()
    student.model.norm.weight.copy_(t_norm if same_width else torch.ones(s_cfg.hidden_size))
    for s_layer, i in zip(student.model.layers, layers):
        t_layer = teacher.model.layers[i]
        if same_width and _same_block_shape(s_cfg, t_cfg):
            s_layer.load_state_dict({k: v.float() for k, v in t_layer.state_dict().items()})
        else:
            _project_block(s_layer, t_layer, s_cfg, t_cfg, proj if proj is not None else torch.eye(t_cfg.hidden_size))
    return layers


def _same_block_shape(s, t) -> bool:
    return (s.num_attention_heads, s.num_key_value_heads, s.intermediate_size) == (
        t.num_attention_heads, t.num_key_value_heads, t.intermediate_size)


def _project_block(s_layer: nn.Module, t_layer: nn.Module, s_cfg, t_cfg, proj: torch.Tensor) -> None:
    """Kept heads and MLP channels of one teacher block, input/output sides projected by `proj` (d x h)."""
    hd = s_cfg.head_dim
    t_group = t_cfg.num_attention_heads // t_cfg.num_key_value_heads
    s_group = s_cfg.num_attention_heads // s_cfg.num_key_value_heads
    if s_cfg.num_key_value_heads > t_cfg.num_key_value_heads or s_group > t_group:
        raise EdgeKDError("width reduction keeps whole teacher heads: the student needs at most the teacher's "
                          "key/value heads and query heads per group")
    kv_keep = list(range(s_cfg.num_key_value_heads))
    q_keep = [g * t_group + j for g in kv_keep for j in range(s_group)]
    rows = lambda heads: torch.cat([torch.arange(h * hd, (h + 1) * hd) for h in heads])  # noqa: E731
    attn, t_attn = s_layer.self_attn, t_layer.self_attn
    g_in = t_layer.input_layernorm.weight.float()
    for name, keep in (("q_proj", q_keep), ("k_proj", kv_keep), ("v_proj", kv_keep)):
        w = getattr(t_attn, name).weight.float()[rows(keep)] * g_in
        getattr(attn, name).weight.copy_(w @ proj)
    attn.o_proj.weight.copy_(proj.T @ t_attn.o_proj.weight.float()[:, rows(q_keep)])
    g_post = t_layer.post_attention_layernorm.weight.float()
    t_mlp, mlp = t_layer.mlp, s_layer.mlp
    score = t_mlp.gate_proj.weight.float().norm(dim=1) * t_mlp.up_proj.weight.float().norm(dim=1) \
        * t_mlp.down_proj.weight.float().norm(dim=0)
    keep = score.topk(s_cfg.intermediate_size).indices.sort().values
    mlp.gate_proj.weight.copy_((t_mlp.gate_proj.weight.float()[keep] * g_post) @ proj)
    mlp.up_proj.weight.copy_((t_mlp.up_proj.weight.float()[keep] * g_post) @ proj)
    mlp.down_proj.weight.copy_(proj.T @ t_mlp.down_proj.weight.float()[:, keep])
    s_layer.input_layernorm.weight.fill_(1.0)
    s_layer.post_attention_layernorm.weight.fill_(1.0)


def parameter_count(model: nn.Module) -> int:
    """Unique parameters (tied embeddings counted once)."""
    return sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())
