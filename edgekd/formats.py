"""Model file formats and the runtimes that execute them: the one home of format <-> suffix <-> runtime.

A `Format` is what edgekd can write (suffix, exporter, how to read precision/batch back from a file, how to embed
bundle metadata); a `Runtime` is what can execute files (suffixes, how to open a `Session`, the import it needs).
Recipes (`export.formats`), the CLI, verify, profile, bundle and the quantization schemes all ask these two
registries.

Built-ins are declared beside their code and imported on the first lookup, so `import edgekd` stays fast:
formats in edgekd/export/{onnx,tflite,pt2}.py, runtimes in edgekd/runtimes/{onnxruntime,litert,torch,tensorrt}.py.
A new format or runtime is one new module that calls `register_format` / `register_runtime` (add its module name
to `BUILTIN_FORMATS` / `BUILTIN_RUNTIMES` to make it built in), or a call from user code or a test.
See docs/extending.md.
"""
from __future__ import annotations

import importlib
import importlib.util
import inspect
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator, TypeVar

from edgekd.errors import EdgeKDError
from edgekd.fileio import existing_model_file
from edgekd.registry import Registry

if TYPE_CHECKING:
    from edgekd.runtimes.session import Session

T = TypeVar("T")

BUILTIN_FORMATS = ("edgekd.export.onnx", "edgekd.export.tflite", "edgekd.export.pt2")
BUILTIN_RUNTIMES = ("edgekd.runtimes.onnxruntime", "edgekd.runtimes.litert", "edgekd.runtimes.torch",
                    "edgekd.runtimes.tensorrt")


@dataclass(frozen=True)
class Runtime:
    """Something that executes model files: onnxruntime, LiteRT, torch, or one only a device has (TensorRT).

    `open(path, threads) -> Session`; None when edgekd cannot run it on this machine (targets may still list it,
    profiling then measures on the device or predicts). `module` is the import `available()` checks and `extra`
    the pip extra that installs it.
    """

    name: str
    suffixes: tuple[str, ...]
    open: Callable[[Path, int], "Session"] | None
    module: str | None = None
    extra: str | None = None

    def available(self) -> bool:
        """True when this runtime can open files here (runnable and its library importable)."""
        if self.open is None:
            return False
        if self.module is None:
            return True
        try:
            return importlib.util.find_spec(self.module) is not None
        except (ImportError, ValueError):
            return False


@dataclass(frozen=True)
class Format:
    """A model file format edgekd writes: name (recipe `export.formats`, CLI `--format`), suffix, runtimes.

    export(model, example_inputs, out, **options) -> Path writes the file atomically; describe(path) -> dict reads
    {"precision": "fp32"|"int8"|"fp16", "batch": int|None, ...} back from the file itself (the one precision
    detector); write_metadata(src, dst, info, labels, norm) -> Path embeds bundle metadata and
    read_metadata(path_or_bytes) -> dict reads it back ({name, labels, norm_mean, norm_std, input_tensor,
    output_tensor, ...}); a format without them (None) cannot go into a bundle.
    """

    name: str
    suffix: str
    runtimes: tuple[str, ...]
    export: Callable[..., Path]
    describe: Callable[[Path], dict]
    write_metadata: Callable[..., Path] | None = None
    extra: str | None = None
    read_metadata: Callable[[Path | bytes], dict] | None = None


class BuiltinRegistry(Registry[T]):
    """A Registry that imports the modules declaring its built-in entries on the first lookup."""

    def __init__(self, kind: str, builtins: tuple[str, ...]):
        super().__init__(kind)
        self.builtins = builtins
        self._loaded = False

    def load_builtins(self) -> None:
        if self._loaded:
            return
        self._loaded = True  # set first: the modules call register(), which must not recurse into loading
        try:
            for module in self.builtins:
                importlib.import_module(module)
        except BaseException:
            self._loaded = False
            raise

    def get(self, name: str) -> T:
        self.load_builtins()
        return super().get(name)

    def unknown_message(self, name: str) -> str:
        self.load_builtins()
        return super().unknown_message(name)

    def names(self) -> list[str]:
        self.load_builtins()
        return super().names()

    def values(self) -> list[T]:
        """Every registered entry, in name order."""
        return [self._items[n] for n in self.names()]

    def unregister(self, name: str) -> None:
        """Remove `name` (for tests that register their own entries and clean up after themselves)."""
        self._items.pop(name, None)

    def __contains__(self, name: object) -> bool:
        self.load_builtins()
        return super().__contains__(name)

    def __iter__(self) -> Iterator[str]:
        self.load_builtins()
        return super().__iter__()


FORMATS: BuiltinRegistry[Format] = BuiltinRegistry("format", BUILTIN_FORMATS)
RUNTIMES: BuiltinRegistry[Runtime] = BuiltinRegistry("runtime", BUILTIN_RUNTIMES)


def register_format(fmt: Format) -> Format:
    """Add `fmt` to FORMATS (its suffix must be new); returns it, so modules can keep a name for it."""
    if not fmt.suffix.startswith(".") or fmt.suffix != fmt.suffix.lower():
        raise ValueError(f"format {fmt.name!r}: suffix must be lower case and start with '.', got {fmt.suffix!r}")
    if not fmt.runtimes:
        raise ValueError(f"format {fmt.name!r}: list at least one runtime that executes it")
    FORMATS.load_builtins()  # a clash with a built-in is found now, not when the built-ins load later
    clash = next((f for n, f in FORMATS._items.items() if f.suffix == fmt.suffix and n != fmt.name), None)
    if clash is not None:
        raise ValueError(f"format {fmt.name!r}: suffix {fmt.suffix} is already format {clash.name!r}")
    return FORMATS.register(fmt.name)(fmt)


def register_runtime(rt: Runtime) -> Runtime:
    """Add `rt` to RUNTIMES; returns it."""
    if any(not s.startswith(".") or s != s.lower() for s in rt.suffixes):
        raise ValueError(f"runtime {rt.name!r}: suffixes must be lower case and start with '.', got {rt.suffixes}")
    RUNTIMES.load_builtins()
    return RUNTIMES.register(rt.name)(rt)


def known_suffixes() -> list[str]:
    """Every suffix a format writes or a runtime executes."""
    return sorted({f.suffix for f in FORMATS.values()} | {s for r in RUNTIMES.values() for s in r.suffixes})


def format_for(path: str | os.PathLike) -> Format:
    """The Format of `path`, by its suffix; EdgeKDError naming the known suffixes when none matches."""
    suffix = Path(path).suffix.lower()
    for fmt in FORMATS.values():
        if fmt.suffix == suffix:
            return fmt
    known = ", ".join(f"{f.suffix} ({f.name})" for f in FORMATS.values())
    raise EdgeKDError(f"cannot tell the format of {Path(path).name!r}: expected one of {known}")


def runtime_for(path: str | os.PathLike) -> str:
    """The runtime that runs `path` by default: its format's first runtime, else a runtime listing the suffix."""
    suffix = Path(path).suffix.lower()
    for fmt in FORMATS.values():
        if fmt.suffix == suffix:
            return fmt.runtimes[0]
    for rt in RUNTIMES.values():
        if suffix in rt.suffixes and rt.open is not None:
            return rt.name
    raise EdgeKDError(f"cannot tell the runtime of {Path(path).name!r}: expected one of "
                      f"{', '.join(known_suffixes())}")


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0][:300] if text else type(e).__name__


def describe_file(path: str | os.PathLike) -> dict:
    """{name, path, format, precision, runtime, bytes, batch} of a model file, read from the file itself.

    Format.describe may add facts (e.g. input_shape). A file the format's reader cannot parse (empty, truncated,
    another format under this suffix) is an EdgeKDError, one line.
    """
    path = Path(path)
    fmt = format_for(path)
    existing_model_file(path)
    try:
        facts = dict(fmt.describe(path))
    except EdgeKDError:
        raise
    except Exception as e:  # protobuf DecodeError, flatbuffer IndexError, zip errors: a damaged file
        raise EdgeKDError(f"cannot read {path.name} as a {fmt.name} file ({_first_line(e)}); it may be truncated "
                          "or not a model file: export it again") from e
    precision, batch = facts.pop("precision"), facts.pop("batch", None)
    return {"name": path.name, "path": str(path), "format": fmt.name, "precision": precision,
            "runtime": fmt.runtimes[0], "bytes": path.stat().st_size, "batch": batch, **facts}


def get_runtime(name: str) -> Runtime:
    """The runnable Runtime `name`: unknown -> closest match; not runnable here or not installed -> one line."""
    rt = RUNTIMES.get(name)
    if rt.open is None:
        runnable = ", ".join(r.name for r in RUNTIMES.values() if r.open is not None)
        raise EdgeKDError(f"runtime {name!r} does not run on this machine (it runs on the device); "
                          f"local runtimes: {runnable}")
    if rt.module is not None and not rt.available():
        hint = f": pip install 'edgekd[{rt.extra}]'" if rt.extra else ""
        raise EdgeKDError(f"runtime {name!r} needs the python module {rt.module!r}, which is not installed{hint}")
    return rt


def open_session(path: str | os.PathLike, runtime: str | None = None, threads: int = 1) -> "Session":
    """Load `path` in `runtime` (from the suffix when None) with `threads` CPU threads; errors are one line."""
    path = existing_model_file(path)
    name = runtime or runtime_for(path)
    rt = get_runtime(name)
    if path.suffix.lower() not in rt.suffixes:
        raise EdgeKDError(f"runtime {name!r} does not run {path.suffix} files (it runs {', '.join(rt.suffixes)})")
    try:
        return rt.open(path, threads)
    except EdgeKDError:
        raise
    except Exception as e:
        raise EdgeKDError(f"{name} cannot load {path.name} ({_first_line(e)}); it may be truncated or not a "
                          "model file: export it again") from e


def export_model(format: str, model: Any, example_inputs: Any, out: str | os.PathLike, **options: Any) -> Path:
    """Write `model` as `format` to `out` through that format's exporter; options it does not take are an error."""
    fmt = FORMATS.get(format)
    out = Path(out)
    if out.suffix.lower() != fmt.suffix:
        raise EdgeKDError(f"a {fmt.name} file should end in {fmt.suffix}; got {out.name!r}")
    if out.is_dir():
        raise EdgeKDError(f"{out} is a directory; give the file to write, e.g. {out / ('model' + fmt.suffix)}")
    params = inspect.signature(fmt.export).parameters
    if not any(p.kind is p.VAR_KEYWORD for p in params.values()):
        bad = sorted(set(options) - set(params))
        if bad:
            takes = [n for n, p in params.items() if p.kind is p.KEYWORD_ONLY] or ["no options"]
            raise EdgeKDError(f"format {fmt.name!r} takes no option {', '.join(map(repr, bad))}; "
                              f"it takes: {', '.join(takes)}")
    return fmt.export(model, example_inputs, out, **options)
