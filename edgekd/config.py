"""Typed recipe: dataclasses per stage, YAML load, and validation that reports every problem at once.

Strings from YAML are checked here (field names, types, ranges) and by edgekd.validate (registered names, loss
options, targets), and resolved to objects at the stage boundary; nothing inside the library looks at raw recipe
dicts. Fields that name registered things (models, losses, schemes, PTQ methods, formats, targets) are plain
strings checked against their registries, so that registering a new one needs no edit here.
"""
from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Literal, Mapping

import yaml

from edgekd.errors import ConfigError, EdgeKDError
from edgekd.resources import shipped_path
from edgekd.train.config import TrainConfig


# Default KD objectives, chosen by measurement on Fashion-MNIST with students of 6k-24k parameters (README):
# distillation T=2, alpha=0.9 (one-seed sweep of T in 1/2/4); QAT fine-tuning CE 0.5 + KD 0.5 at T=1 (best of
# five weightings on a 5k validation split of the training set, within noise of plain CE).
DISTILL_KD_TERMS = ({"name": "ce", "weight": 0.1}, {"name": "kd_soft", "weight": 0.9, "temperature": 2.0})
QAT_KD_TERMS = ({"name": "ce", "weight": 0.5}, {"name": "kd_soft", "weight": 0.5, "temperature": 1.0})


@dataclass
class DataConfig:
    """The data set (docs/byo.md): source, its options, normalization, class names and the validation split.

    mean/std: on the pixel scale (0..255 for 8-bit images), one per channel or one for all; "dataset" = the
    training split's own statistics; "imagenet" = torchvision/timm ImageNet statistics. class_names: names in
    label order, or a text file with one per line. val_fraction/val_size: the stratified, seeded validation split
    carved from the training data (val_size, when set, wins; 0 disables).
    """

    dataset: str = "fashion_mnist"
    root: str | None = None
    kwargs: dict[str, Any] = field(default_factory=dict)     # the source's options, e.g. image_folder's size
    subset_train: int | None = None
    subset_test: int | None = None
    mean: list[float] | str = "dataset"
    std: list[float] | str = "dataset"
    class_names: list[str] | str | None = None
    val_fraction: float = 0.1
    val_size: int | None = None
    batch_size: int = 128
    eval_batch_size: int = 1000
    # Streaming (docs/data.md): images stay on disk and worker processes decode and augment them. dataset is then
    # image_folder (root/<class>/*), manifest (a .csv path,label or .jsonl) or shards (WebDataset tars by brace
    # pattern or glob). test_root: the test split's folder/manifest/shards (default: root/test beside root/train,
    # else test_fraction of the files, seeded). resolution: the square input side. Evaluation: shorter side to
    # resolution/0.875, centre crop.
    # augment: the training transform when a stage trains with augment: true, in memory and streamed alike.
    # standard = random shift by up to shift_pixels (padded with the darkest value) + horizontal flip in memory, and
    # RandomResizedCrop(crop_scale) + flip when streamed; shift = random shift by up to shift_pixels without flips
    # (digits, text, anything a mirror changes); flip = flip only; none = no augmentation.
    stream: bool = False
    test_root: str | None = None
    test_fraction: float = 0.2
    resolution: int = 224
    channels: Literal[1, 3] = 3
    augment: Literal["standard", "shift", "flip", "none"] = "standard"
    shift_pixels: int = 2              # the largest random shift of "standard" (in memory) and "shift"
    crop_scale: list[float] = field(default_factory=lambda: [0.08, 1.0])
    workers: int = 2                   # DataLoader worker processes (0 = read in the training process)
    prefetch: int = 2                  # batches each worker keeps ready
    shuffle_buffer: int = 2000         # shards: samples each worker mixes
    decoder: Literal["auto", "pil", "simplejpeg"] = "auto"   # auto: simplejpeg for JPEG when installed


STREAM_DATASETS = ("image_folder", "manifest", "shards")


def data_problems(d: DataConfig, r: "Recipe | None" = None) -> list[str]:
    """The data section's ranges and combinations, one line each."""
    p: list[str] = []
    if not isinstance(d.stream, bool):
        return p
    if d.stream:
        if isinstance(d.dataset, str) and d.dataset not in STREAM_DATASETS:
            p.append(f"data.stream: streams {', '.join(STREAM_DATASETS)}; dataset {d.dataset!r} is loaded into "
                     f"memory (set data.stream: false)")
        if not d.root:
            p.append("data.root: a streamed dataset needs its folder, manifest or shard pattern")
        if r is not None and (r.distill.auto or r.search.enabled):
            p.append("distill.auto / search.enabled run proxy trainings on in-memory tensors; set them false with "
                     "data.stream: true")
    elif d.dataset in ("manifest", "shards"):
        p.append(f"data.stream: dataset {d.dataset!r} streams its images from disk: set data.stream: true")
    if isinstance(d.resolution, int) and not 8 <= d.resolution <= 4096:
        p.append(f"data.resolution: the input side in pixels, 8..4096, got {d.resolution}")
    for key, lo in (("workers", 0), ("prefetch", 1), ("shuffle_buffer", 1), ("shift_pixels", 0)):
        v = getattr(d, key)
        if isinstance(v, int) and v < lo:
            p.append(f"data.{key}: must be >= {lo}, got {v}")
    cs = d.crop_scale
    if isinstance(cs, list) and (len(cs) != 2 or not all(isinstance(v, float) for v in cs)
                                 or not 0 < cs[0] <= cs[1] <= 1):
        p.append(f"data.crop_scale: [min, max] area fractions with 0 < min <= max <= 1, got {cs}")
    if isinstance(d.test_fraction, float) and not 0 < d.test_fraction < 1:
        p.append(f"data.test_fraction: a fraction in (0, 1), got {d.test_fraction}")
    if d.decoder == "simplejpeg":
        import importlib.util

        if importlib.util.find_spec("simplejpeg") is None:
            p.append("data.decoder: 'simplejpeg' is not installed: pip install 'edgekd[data]' (or decoder: auto)")
    return p


@dataclass
class ModelSpec:
    """A model by name (zoo, torchvision:NAME, timm:NAME, package.module:Callable; docs/models.md).

    kwargs go to the constructor as written (zoo models also get num_classes/in_channels from the data);
    weights: a local file to start from; import_path: folder searched first for package.module (default: the
    recipe's folder).
    """

    model: str = "mobilenet_student"
    kwargs: dict[str, Any] = field(default_factory=dict)
    weights: str | None = None
    import_path: str | None = None


@dataclass
class TeacherConfig:
    """Where the teacher comes from: `weights` to load (torch), a file (torchscript/onnx/keras), or train it.

    mean/std: the normalization a loaded teacher expects (pixel scale, or "imagenet"); edgekd converts the data's
    normalized images to it before the teacher sees them. None = the data's own (data.mean/std).
    layout: a keras teacher's image layout ("auto" reads it from the model's input shape).
    finetune: train a torch teacher starting from `weights` (its head replaced when the class count differs)
    instead of using it as loaded.
    """

    kind: str = "torch"                                    # a registered teacher kind (distill.TEACHER_KINDS)
    model: str = "teacher_cnn"
    kwargs: dict[str, Any] = field(default_factory=dict)
    weights: str | None = None
    path: str | None = None
    members: list[dict[str, Any]] = field(default_factory=list)
    import_path: str | None = None
    mean: list[float] | str | None = None
    std: list[float] | str | None = None
    layout: Literal["auto", "nhwc", "nchw"] = "auto"
    outputs: Literal["auto", "logits", "probabilities"] = "auto"
    finetune: bool = False
    train: TrainConfig = field(default_factory=lambda: TrainConfig(epochs=12, lr=3e-3, augment=True,
                                                                    weight_decay=5e-4))


@dataclass
class DistillConfig:
    """mode: 'teacher' (offline KD from the teacher), 'mutual' (DML of `peers` students, no teacher needed),
    'born_again' (`generations` students in sequence, each taught by the previous one)."""

    enabled: bool = True
    mode: Literal["teacher", "mutual", "born_again"] = "teacher"
    peers: int = 2
    generations: int = 2
    mutual_kl_weight: float = 1.0
    losses: list[dict[str, Any]] = field(default_factory=lambda: [dict(t) for t in DISTILL_KD_TERMS])
    cache_teacher: bool = True
    cache_topk: int | None = None
    train: TrainConfig = field(default_factory=lambda: TrainConfig(epochs=5, lr=1e-2))
    # The same student trained without the teacher (docs/auto.md): "auto" trains it when it is cheap.
    baseline: Literal["auto", True, False] = "auto"
    auto: bool = False                 # choose the losses by measurement first (the `tune` stage, docs/auto.md)


@dataclass
class QuantizeConfig:
    enabled: bool = True
    method: Literal["qat", "ptq"] = "qat"
    kd: bool = True
    kd_teacher: Literal["teacher", "student"] = "teacher"
    kd_losses: list[dict[str, Any]] = field(default_factory=lambda: [dict(t) for t in QAT_KD_TERMS])
    scheme: str = "auto"
    freeze_observers_after: float | None = 0.6
    freeze_bn_after: float | None = 0.8
    ptq_method: str = "minmax"                             # a registered calibration method
    calibration: str = "calibration/default.yaml"
    keep_float: list[str] = field(default_factory=list)   # module paths kept in float (mixed precision)
    sensitivity: bool = True                               # per-layer int8 cost table + k=1 float fallback
    train: TrainConfig = field(default_factory=lambda: TrainConfig(epochs=1, lr=5e-4, schedule="cosine"))


@dataclass
class ExportConfig:
    formats: list[str] = field(default_factory=lambda: ["onnx", "tflite"])   # names in edgekd.formats.FORMATS
    precisions: list[Literal["fp32", "int8"]] = field(default_factory=lambda: ["fp32", "int8"])
    opset: int = 18


@dataclass
class VerifyConfig:
    parity_tolerance: float = 1e-4
    parity_samples: int = 256
    test_subset: int | None = None
    fail_on_parity: bool = True      # a file that fails parity stops the run (false: record it and go on)


@dataclass
class ProfileConfig:
    targets: list[str] = field(default_factory=lambda: ["cpu-local"])
    threads: int = 1
    max_seconds: float = 2.0
    min_runs: int = 50


@dataclass
class BundleConfig:
    enabled: bool = True
    targets: list[str] = field(default_factory=lambda: ["cpu-local"])
    model_name: str = "edgekd-student"
    version: str = "1.0.0"
    author: str = "edgekd"
    license: str = "Apache-2.0"
    description: str = "Image classifier distilled and quantized with edgekd."
    signing_key: str | None = None     # Ed25519 private key (PEM): archives carry manifest.sig (bundle.signing)


def _default_search_space() -> list[dict[str, Any]]:
    return [{"model": "tiny_cnn", "kwargs": {"width": [8, 12, 16, 24], "depth": [2, 3]}},
            {"model": "mobilenet_student", "kwargs": {"width_mult": [0.5, 0.75, 1.0], "depth": [1, 2],
                                                      "expand": [2, 4]}},
            {"model": "resnet_student", "kwargs": {"width": [8, 12], "depth": [1]}}]


@dataclass
class TuneConfig:
    """KD settings chosen by short proxy runs on the validation split (docs/auto.md; on with distill.auto)."""

    trials: int = 16
    budget_s: float = 600.0                # wall-clock budget of the whole search
    proxy_epochs: float = 2.0
    proxy_train: int | None = 5000         # training images per proxy run (None: all)
    families: list[str] = field(default_factory=lambda: ["kd_soft", "dkd", "dist"])
    standardize: bool = True               # also try logit standardisation
    include_ce: bool = True                # the no-teacher objective competes too
    temperature: list[float] = field(default_factory=lambda: [1.0, 8.0])   # [low, high], sampled on a log scale
    hint: dict[str, Any] | None = None     # {student: features.N, teacher: features.M}: also try a FitNets hint
    pruner: Literal["hyperband", "successive_halving", "none"] = "hyperband"
    # re-train the best `confirm` trials, the recipe's losses and CE with the full distill.train budget on all
    # training images and choose among those (a proxy ranks settings; it does not predict the full run)
    confirm: int = 2
    seed: int = 0


@dataclass
class SearchConfig:
    """Student search under a latency budget per target (docs/auto.md; `edgekd search`)."""

    enabled: bool = False
    targets: list[str] = field(default_factory=lambda: ["cpu-local"])
    budget_ms: dict[str, float] = field(default_factory=dict)             # target -> p50 budget in ms
    space: list[dict[str, Any]] = field(default_factory=_default_search_space)
    max_candidates: int = 24
    proxy_epochs: float = 2.0
    proxy_train: int | None = 5000
    measure_local: bool = True             # measure cpu-local candidates (ONNX, ORT) besides predicting them
    full_train: int = 0                    # train this many candidates fully to check the proxy ranking
    seed: int = 0


@dataclass
class Recipe:
    name: str = "run"
    seed: int = 0
    runs_dir: str = "runs"
    data: DataConfig = field(default_factory=DataConfig)
    teacher: TeacherConfig = field(default_factory=TeacherConfig)
    student: ModelSpec = field(default_factory=ModelSpec)
    distill: DistillConfig = field(default_factory=DistillConfig)
    quantize: QuantizeConfig = field(default_factory=QuantizeConfig)
    export: ExportConfig = field(default_factory=ExportConfig)
    verify: VerifyConfig = field(default_factory=VerifyConfig)
    profile: ProfileConfig = field(default_factory=ProfileConfig)
    bundle: BundleConfig = field(default_factory=BundleConfig)
    tune: TuneConfig = field(default_factory=TuneConfig)
    search: SearchConfig = field(default_factory=SearchConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# --------------------------------------------------------------------------------------------- parsing


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return " | ".join(repr(a) for a in typing.get_args(tp))
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    if origin in (list, dict):
        return f"{origin.__name__}[{', '.join(_type_name(a) for a in typing.get_args(tp))}]"
    return getattr(tp, "__name__", str(tp))


def _coerce(value: Any, tp: Any, where: str, problems: list[str], base: Any = None) -> Any:
    """Check `value` against annotation `tp`; return the converted value (problems appended, never raised).

    A mapping for a dataclass field overrides the field's own default (`base`), so `distill: {train: {device:
    cuda}}` keeps distill's own learning rate and epochs instead of falling back to TrainConfig's class defaults.
    """
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            problems.append(f"{where}: expected a mapping of {tp.__name__} fields, got {value!r}")
            return base if base is not None else tp()
        return _build(tp, value, where, problems, base)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        for a in args:
            if a is type(None):
                continue
            trial: list[str] = []
            out = _coerce(value, a, where, trial)
            if not trial:
                return out
        problems.append(f"{where}: expected {_type_name(tp)}, got {value!r}")
        return value
    if origin is Literal:
        allowed = typing.get_args(tp)
        if value not in allowed:
            close = difflib.get_close_matches(str(value), [str(a) for a in allowed], n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            problems.append(f"{where}: {value!r} is not allowed{hint} allowed: {', '.join(map(str, allowed))}")
        return value
    if origin is list:
        if not isinstance(value, list):
            problems.append(f"{where}: expected a list, got {value!r}")
            return []
        (item,) = typing.get_args(tp)
        return [_coerce(v, item, f"{where}[{i}]", problems) for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            problems.append(f"{where}: expected a mapping, got {value!r}")
            return {}
        return dict(value)
    if tp is Any:
        return value
    if tp is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if tp is float and isinstance(value, str):
        try:
            return float(value)  # YAML reads 1e-3 as a string
        except ValueError:
            pass
    if tp in (int, str, bool) and isinstance(value, tp) and not (tp is int and isinstance(value, bool)):
        return value
    problems.append(f"{where}: expected {_type_name(tp)}, got {value!r}")
    return value


def _build(cls: type, data: dict[str, Any], where: str, problems: list[str], base: Any = None) -> Any:
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    names = list(fields)
    kwargs = {f.name: getattr(base, f.name) for f in dataclasses.fields(cls) if f.init} if base is not None else {}
    for key, value in data.items():
        path = f"{where}.{key}" if where else str(key)
        if key not in names:
            close = difflib.get_close_matches(str(key), names, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            problems.append(f"{path}: unknown field{hint} known: {', '.join(names)}")
            continue
        kwargs[key] = _coerce(value, hints[key], path, problems, _field_default(fields[key], kwargs.get(key)))
    return cls(**kwargs)


def _field_default(f: dataclasses.Field, current: Any) -> Any:
    """What a mapping given for field `f` overrides: the base's value, else the field's own default."""
    if dataclasses.is_dataclass(current):
        return current
    if f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
        value = f.default_factory()  # type: ignore[misc]
        return value if dataclasses.is_dataclass(value) else None
    return f.default if dataclasses.is_dataclass(f.default) else None


def range_problems(r: Recipe) -> list[str]:
    """Ranges and combinations of values (no registry needed)."""
    p: list[str] = []

    def positive(value: float | None, where: str, allow_zero: bool = False) -> None:
        if isinstance(value, (int, float)) and (value < 0 or (value == 0 and not allow_zero)):
            p.append(f"{where}: must be {'>= 0' if allow_zero else '> 0'}, got {value}")

    for where, t in (("teacher.train", r.teacher.train), ("distill.train", r.distill.train),
                     ("quantize.train", r.quantize.train)):
        positive(t.epochs, f"{where}.epochs", allow_zero=True)
        positive(t.lr, f"{where}.lr")
        positive(t.weight_decay, f"{where}.weight_decay", allow_zero=True)
        positive(t.checkpoint_every, f"{where}.checkpoint_every")
        p.extend(t.problems(where, include_typed=False))  # precision's allowed values: checked as its Literal
    positive(r.data.batch_size, "data.batch_size")
    positive(r.data.eval_batch_size, "data.eval_batch_size")
    positive(r.data.subset_train, "data.subset_train")
    positive(r.data.subset_test, "data.subset_test")
    positive(r.data.val_size, "data.val_size", allow_zero=True)
    p += data_problems(r.data, r)
    if isinstance(r.data.val_fraction, (int, float)) and not 0 <= r.data.val_fraction < 1:
        p.append(f"data.val_fraction: a fraction in [0, 1) of the training images (0 = no validation split), "
                 f"got {r.data.val_fraction}")
    positive(r.verify.parity_tolerance, "verify.parity_tolerance")
    positive(r.profile.threads, "profile.threads")
    positive(r.profile.max_seconds, "profile.max_seconds")
    for key in ("freeze_observers_after", "freeze_bn_after"):
        v = getattr(r.quantize, key)
        if isinstance(v, (int, float)) and not 0 <= v <= 1:
            p.append(f"quantize.{key}: a fraction of the QAT steps in [0, 1], got {v}")
    if r.teacher.kind in ("torchscript", "onnx", "keras") and not r.teacher.path:
        p.append(f"teacher.path: a {r.teacher.kind} teacher needs the file's path")
    if r.teacher.kind == "ensemble" and not r.teacher.members:
        p.append("teacher.members: an ensemble teacher needs a list of member teacher specs")
    if r.distill.mode == "mutual" and isinstance(r.distill.peers, int) and r.distill.peers < 2:
        p.append(f"distill.peers: mutual learning needs >= 2 peers, got {r.distill.peers}")
    if r.distill.mode == "born_again" and isinstance(r.distill.generations, int) and r.distill.generations < 1:
        p.append(f"distill.generations: must be >= 1, got {r.distill.generations}")
    if r.distill.enabled and not r.distill.losses:
        p.append("distill.losses: distillation is enabled but no loss is listed")
    q = r.quantize
    if q.method == "qat" and q.train.precision != "fp32":
        p.append(f"quantize.train.precision: QAT trains in fp32 (torchao's PT2E fake-quantize ops take fp32 "
                 f"only), got {q.train.precision!r}; set it to fp32 (device: cuda still applies)")
    if q.enabled and q.method == "qat" and q.kd and not q.kd_losses:
        p.append("quantize.kd_losses: QAT with kd: true needs at least one loss (or set kd: false)")
    return p


def parse_recipe(data: dict[str, Any] | None, source: str = "recipe") -> Recipe:
    """Build a Recipe from a mapping; raise ConfigError listing every problem."""
    problems: list[str] = []
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError([f"the top level must be a mapping of sections, got {type(data).__name__}"], source)
    if data.get("task") == "causal_lm":  # the language-model task has its own sections (edgekd.lm.recipe)
        from edgekd.lm.recipe import parse_lm_recipe

        return parse_lm_recipe(data, source)
    from edgekd.validate import recipe_problems  # it imports the registries (losses, models, targets, ...)

    recipe = _build(Recipe, data, "", problems)
    problems += range_problems(recipe)
    problems += recipe_problems(recipe)
    if problems:
        raise ConfigError(problems, source)
    return recipe


def load_recipe(path: str | Path, overrides: Mapping[str, Any] | Iterable[str] | None = None) -> Recipe:
    """Read a YAML recipe with optional dotted-key overrides.

    overrides: a mapping like {'distill.train.epochs': 1}, or `--set` strings like ['distill.train.epochs=1']
        (parsed by `parse_overrides`).
    """
    path = Path(path)
    if not path.is_file():
        raise EdgeKDError(f"recipe not found: {path}")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise EdgeKDError(f"{path} is not valid YAML: {str(e).splitlines()[0]}") from e
    if overrides is not None and not isinstance(overrides, Mapping):
        overrides = parse_overrides(overrides)
    for key, value in (overrides or {}).items():
        set_dotted(data, key, value)
    recipe = parse_recipe(data, str(path))
    resolve_paths(recipe, path.parent)
    return recipe


PROJECT_ROOT = shipped_path(".")  # the repository checkout, or the wheel's copy of targets/ and calibration/


def resolve_path(value: str | None, base: Path) -> str | None:
    """A relative path from a recipe: beside the recipe, else the working directory, else the project root."""
    if not value or Path(value).is_absolute():
        return value
    for root in (base, Path.cwd(), PROJECT_ROOT):
        if (root / value).exists():
            return str((root / value).resolve())
    return value


def resolve_paths(recipe: Recipe, base: Path) -> None:
    if hasattr(recipe, "resolve_paths"):  # a task recipe with its own path fields (edgekd.lm.recipe.LMRecipe)
        return recipe.resolve_paths(base)
    recipe.teacher.weights = resolve_path(recipe.teacher.weights, base)
    recipe.teacher.path = resolve_path(recipe.teacher.path, base)
    recipe.student.weights = resolve_path(recipe.student.weights, base)
    for spec in (recipe.student, recipe.teacher):  # package.module:Callable is imported from the recipe's folder
        if spec.import_path is not None:
            spec.import_path = resolve_path(spec.import_path, base)
        elif ":" in spec.model and spec.model.partition(":")[0] not in ("torchvision", "timm"):
            spec.import_path = str(base.resolve())
    if isinstance(recipe.data.class_names, str):
        recipe.data.class_names = resolve_path(recipe.data.class_names, base)
    recipe.quantize.calibration = resolve_path(recipe.quantize.calibration, base) or recipe.quantize.calibration
    for key in ("root", "test_root"):  # a shard pattern resolves by its folder
        value = getattr(recipe.data, key)
        if value and not Path(value).is_absolute():
            folder = resolve_path(str(Path(value).parent), base) if Path(value).parent != Path(".") else None
            resolved = resolve_path(value, base)
            if resolved == value and folder and Path(folder).is_absolute():
                resolved = str(Path(folder) / Path(value).name)
            setattr(recipe.data, key, resolved)


def parse_overrides(items: Iterable[str]) -> dict[str, Any]:
    """`--set KEY=VALUE` strings -> {KEY: value}, each value read as plain YAML (number, string, list, mapping).

    Raises:
        EdgeKDError: an item without '=' or a value YAML cannot read plainly (a tag like !!python/object is no
            plain value), in one line naming the item.
    """
    if isinstance(items, str):
        items = [items]
    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = str(item).partition("=")
        key = key.strip()
        if not sep or not key:
            raise EdgeKDError(f"--set takes KEY=VALUE (e.g. distill.train.epochs=2), got {item!r}")
        try:
            out[key] = yaml.safe_load(value)
        except yaml.YAMLError as e:
            why = " ".join(str(getattr(e, "problem", None) or e).split())
            raise EdgeKDError(f"--set {item!r}: the value is not plain YAML ({why}); give a number, a string, a "
                              f"list or a mapping (YAML tags such as !!python/... are not accepted)") from None
    return out


def set_dotted(data: dict[str, Any], key: str, value: Any) -> None:
    node = data
    *parents, last = key.split(".")
    for part in parents:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise EdgeKDError(f"override {key!r}: {part!r} is not a section")
    node[last] = value


def dump_recipe(recipe: Recipe) -> str:
    return yaml.safe_dump(recipe.to_dict(), sort_keys=False)
