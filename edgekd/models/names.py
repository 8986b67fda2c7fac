"""Model names a recipe or the CLI may give, resolved to a factory once, at the boundary.

Four spellings (docs/models.md):
- a zoo name (`tiny_cnn`): edgekd's own registered models;
- `torchvision:NAME` (`torchvision:mobilenet_v3_large`): `torchvision.models.get_model_builder(NAME)`;
- `timm:NAME` (`timm:mobilenetv4_conv_small`): `timm.create_model(NAME, pretrained=False, **kwargs)`;
- `package.module:Callable` (`mymodels:build`): any importable callable returning an nn.Module.

A `package.module` is looked up with the recipe's own folder (`import_path`) on `sys.path` for the duration of
the import only, so `mymodels.py` beside the recipe works without PYTHONPATH and leaves `sys.path` as it was.
"""
from __future__ import annotations

import contextlib
import difflib
import importlib
import sys
from pathlib import Path
from typing import Any, Callable, Iterator

from torch import nn

from edgekd.errors import EdgeKDError

Factory = Callable[..., nn.Module]
LIBRARY_PREFIXES = ("torchvision", "timm")


@contextlib.contextmanager
def import_path(folder: str | Path | None) -> Iterator[None]:
    """Put `folder` first on sys.path while the block runs (imports made then stay in sys.modules)."""
    if not folder:
        yield
        return
    entry = str(Path(folder).expanduser().resolve())
    sys.path.insert(0, entry)
    try:
        yield
    finally:
        with contextlib.suppress(ValueError):
            sys.path.remove(entry)


def _closest(name: str, known: list[str]) -> str:
    close = difflib.get_close_matches(name, known, n=3, cutoff=0.6)
    return f"; did you mean {', '.join(map(repr, close))}?" if close else ""


def _torchvision_factory(name: str) -> Factory:
    from edgekd.models.vision import import_torchvision

    tv = import_torchvision()
    try:
        return tv.models.get_model_builder(name)
    except ValueError:
        known = tv.models.list_models(module=tv.models)
        raise EdgeKDError(f"unknown torchvision model {name!r}{_closest(name, known)} (classifiers: "
                          f"{', '.join(known[:8])}, ...; full list: torchvision.models.list_models())") from None


def _timm_factory(name: str) -> Factory:
    from edgekd.models.vision import import_timm

    timm = import_timm()
    if not timm.is_model(name):
        raise EdgeKDError(f"unknown timm model {name!r}{_closest(name, timm.list_models())} "
                          f"(full list: timm.list_models())")

    def create(**kwargs: Any) -> nn.Module:
        # Never download: pretrained weights come from a local file (`weights:`), see docs/models.md.
        return timm.create_model(name, **{"pretrained": False, **kwargs})

    create.__name__ = name
    return create


def _import_factory(name: str, folder: str | Path | None) -> Factory:
    module_name, _, attr = name.partition(":")
    if module_name.split(".")[0] in LIBRARY_PREFIXES:  # their import needs the CPU-torch workaround first
        from edgekd.models.vision import import_timm, import_torchvision

        (import_timm if module_name.startswith("timm") else import_torchvision)()
    try:
        with import_path(folder):
            factory = importlib.import_module(module_name)
        for part in attr.split("."):
            factory = getattr(factory, part)
    except (ImportError, AttributeError) as e:
        where = f" or from {folder}" if folder else ""
        raise EdgeKDError(f"cannot import model {name!r}: {e}; give 'package.module:Callable' importable from "
                          f"this environment{where} (the recipe's folder is searched), 'torchvision:NAME', "
                          f"'timm:NAME', or a zoo name") from e
    if not callable(factory):
        raise EdgeKDError(f"model {name!r} is a {type(factory).__name__}, not a callable returning an nn.Module")
    return factory


def resolve_model(name: str, import_folder: str | Path | None = None) -> Factory:
    """The factory that `name` stands for (zoo name, torchvision:NAME, timm:NAME or package.module:Callable)."""
    from edgekd.models.zoo import MODELS

    if not isinstance(name, str) or not name:
        raise EdgeKDError(f"a model name must be a non-empty string, got {name!r}")
    prefix, sep, rest = name.partition(":")
    if not sep:
        return MODELS.get(name)
    if not rest:
        raise EdgeKDError(f"model {name!r} names nothing after ':'; e.g. 'torchvision:resnet18', "
                          f"'timm:mobilenetv4_conv_small' or 'mymodels:build'")
    if prefix == "torchvision":
        return _torchvision_factory(rest)
    if prefix == "timm":
        return _timm_factory(rest)
    return _import_factory(name, import_folder)


def is_zoo_name(name: str) -> bool:
    """True for edgekd's own models: they take num_classes and in_channels, which edgekd fills from the data."""
    return ":" not in name


__all__ = ["import_path", "is_zoo_name", "resolve_model"]
