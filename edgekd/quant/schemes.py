"""Quantization schemes: the integer ranges a runtime executes faithfully, chosen per target runtime (DESIGN §4)."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

from edgekd.errors import EdgeKDError
from edgekd.registry import Registry

_DTYPES = {"int8": (-128, 127), "uint8": (0, 255)}


@dataclass(frozen=True)
class Scheme:
    """Integer formats of weights and activations for one runtime family.

    Weights are always symmetric (zero point 0), per output channel when `per_channel`; activations are per tensor.
    A narrower weight range than the dtype's (e.g. -64..63 in int8) is still a valid file for every int8 runtime.
    """

    name: str
    weight_dtype: str = "int8"
    weight_qmin: int = -127
    weight_qmax: int = 127
    per_channel: bool = True
    symmetric_weights: bool = True
    activation_dtype: str = "int8"
    activation_qmin: int = -128
    activation_qmax: int = 127
    symmetric_activations: bool = False
    runtimes: tuple[str, ...] = ()
    notes: str = ""

    def __post_init__(self) -> None:
        problems = []
        for what in ("weight", "activation"):
            dtype = getattr(self, f"{what}_dtype")
            qmin, qmax = getattr(self, f"{what}_qmin"), getattr(self, f"{what}_qmax")
            if dtype not in _DTYPES:
                problems.append(f"{what}_dtype {dtype!r} is not supported; use one of {sorted(_DTYPES)}")
                continue
            lo, hi = _DTYPES[dtype]
            if not lo <= qmin < qmax <= hi:
                problems.append(f"{what} range {qmin}..{qmax} must satisfy {lo} <= qmin < qmax <= {hi} for {dtype}")
        if not self.symmetric_weights:
            problems.append("symmetric_weights=False is not supported: int8 runtimes need weight zero point 0")
        if self.symmetric_activations and self.activation_dtype != "int8":
            problems.append("symmetric_activations needs activation_dtype 'int8' (zero point 0)")
        if problems:
            raise ValueError(f"scheme {self.name!r}: " + "; ".join(problems))

    @property
    def weight_bits(self) -> float:
        """Effective weight bits: 7.0 for -64..63, 8.0 for -128..127 (log2 of the number of levels, rounded)."""
        import math

        return round(math.log2(self.weight_qmax - self.weight_qmin + 1), 2)

    def to_dict(self) -> dict:
        """JSON-ready fields (the 'scheme' entry of the quantize stage metrics)."""
        d = dataclasses.asdict(self)
        d["runtimes"] = list(self.runtimes)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "Scheme":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown scheme field(s) {unknown}; known: {sorted(known)}")
        d = dict(d)
        if "runtimes" in d:
            d["runtimes"] = tuple(d["runtimes"])
        return cls(**d)


SCHEMES: Registry[Scheme] = Registry("quantization scheme")

LITERT_INT8 = SCHEMES.register("litert_int8")(Scheme(
    "litert_int8", weight_qmin=-127, weight_qmax=127, runtimes=("litert",),
    notes="TFLite int8 spec: weights int8 symmetric per-channel in -127..127, activations int8 asymmetric per-tensor."))
ORT_X86_NOVNNI = SCHEMES.register("ort_x86_novnni")(Scheme(
    "ort_x86_novnni", weight_qmin=-64, weight_qmax=63, runtimes=("onnxruntime", "litert"),
    notes="7-bit weights: ORT's U8S8 AVX2 kernels (vpmaddubsw) sum u8*s8 pairs in int16 and saturate with full "
          "int8 weights; 255*64*2 < 32767 never does. Still valid int8 for LiteRT, so one QAT run serves both."))
ORT_VNNI = SCHEMES.register("ort_vnni")(Scheme(
    "ort_vnni", weight_qmin=-127, weight_qmax=127, runtimes=("onnxruntime", "litert"),
    notes="CPUs with AVX-VNNI/AVX512-VNNI (or ARM) accumulate in int32 without saturation: full int8 weights."))
TENSORRT_INT8 = SCHEMES.register("tensorrt_int8")(Scheme(
    "tensorrt_int8", weight_qmin=-127, weight_qmax=127, symmetric_activations=True, runtimes=("tensorrt",),
    notes="TensorRT explicit Q/DQ: symmetric int8 weights (per-channel) and activations (zero point 0)."))


def detect_cpu_vnni(cpuinfo: str | Path = "/proc/cpuinfo") -> bool:
    """True when the x86 CPU flags list avx512_vnni or avx_vnni (int8 dot products without int16 saturation)."""
    try:
        text = Path(cpuinfo).read_text()
    except OSError:
        return False
    flags: set[str] = set()
    for line in text.splitlines():
        if line.startswith("flags"):
            flags.update(line.split(":", 1)[-1].split())
    return bool(flags & {"avx512_vnni", "avx_vnni"})


def get_scheme(name_or_scheme: str | Scheme) -> Scheme:
    """Resolve a scheme name (unknown -> closest match and known names) or pass a Scheme through."""
    return name_or_scheme if isinstance(name_or_scheme, Scheme) else SCHEMES.get(name_or_scheme)


def scheme_for_runtimes(runtimes: list[str] | tuple[str, ...], cpu_has_vnni: bool | None = None,
                        override: str | Scheme | None = None) -> Scheme:
    """Pick the scheme every listed runtime executes faithfully; `override` (a name or Scheme) wins when given.

    onnxruntime without VNNI needs 7-bit weights; those are valid int8 for LiteRT too, so litert + onnxruntime on
    such a CPU gets `ort_x86_novnni` and one QAT run serves both files. TensorRT needs symmetric activations, which
    the other runtimes run too, but 7-bit weights plus symmetric activations is not a registered scheme: asking for
    tensorrt with onnxruntime on a non-VNNI CPU is an error that says to quantize per runtime. Runtime names come
    from edgekd.formats.RUNTIMES; one with no needs of its own (torch runs the simulation as is; a newly
    registered one) adds no constraint, and the default is the TFLite int8 spec.
    """
    from edgekd.formats import RUNTIMES

    if override is not None:
        return get_scheme(override)
    wanted = [str(r).lower() for r in runtimes]
    if not wanted:
        raise EdgeKDError(f"scheme_for_runtimes needs at least one runtime; known: {', '.join(RUNTIMES.names())}")
    for r in wanted:
        if r not in RUNTIMES:
            raise EdgeKDError(f"quantization scheme for {RUNTIMES.unknown_message(r)}")
    needs_7bit = "onnxruntime" in wanted and not (detect_cpu_vnni() if cpu_has_vnni is None else cpu_has_vnni)
    if "tensorrt" in wanted:
        if needs_7bit:
            raise EdgeKDError("no single scheme serves tensorrt (symmetric activations) and onnxruntime on a CPU "
                              "without VNNI (7-bit weights); quantize once per runtime or name a scheme override")
        return TENSORRT_INT8
    if "onnxruntime" in wanted:
        return ORT_X86_NOVNNI if needs_7bit else ORT_VNNI
    return LITERT_INT8
