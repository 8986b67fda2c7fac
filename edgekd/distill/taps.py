"""Student forward that also returns named intermediate features (for hint/attention/relation losses)."""
from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from edgekd.errors import EdgeKDError


def student_features_fn(model: nn.Module, names: tuple[str, ...], call: nn.Module | None = None
                        ) -> Callable[[torch.Tensor], tuple[torch.Tensor, dict[str, torch.Tensor] | None]]:
    """Return f(x) -> (logits, {name: feature}) capturing `names` with forward hooks (None when no names).

    `call` is what runs the forward (e.g. a DDP wrapper of `model`); hooks sit on `model`'s own submodules.
    """
    call = call or model
    if not names:
        return lambda x: (call(x), None)
    modules = dict(model.named_modules())
    missing = [n for n in names if n not in modules]
    if missing:
        import difflib

        hints = {n: difflib.get_close_matches(n, list(modules), n=3) for n in missing}
        raise EdgeKDError("student has no module " + "; ".join(
            f"{n!r} (close: {', '.join(h) or 'none'})" for n, h in hints.items()))
    store: dict[str, torch.Tensor] = {}
    for name in names:
        modules[name].register_forward_hook(lambda _m, _i, out, name=name: store.__setitem__(name, out))

    def forward(x: torch.Tensor):
        store.clear()
        logits = call(x)
        return logits, dict(store)

    return forward
