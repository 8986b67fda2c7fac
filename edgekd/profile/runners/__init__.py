"""Profiling runners keyed by target kind: how a model file gets measured on a kind of device.

A runner receives a loaded `Target` and the files to time (as `Job`s: path, runtime, display name) and returns one
`LatencyResult` per job. Built-in runners live beside this file, one module each (`local`: cpu, `adb`: android,
`ssh`: jetson and linux) and register themselves with `register_runner`; every module of this package whose name
does not start with "_" is imported on the first lookup, so a new kind of target is one new module here (plus its
test), and a test can register its own runner. Dispatch on the kind is written once: `runner_for(kind)`.
"""
from __future__ import annotations

import importlib
import pkgutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Sequence

from edgekd.errors import EdgeKDError
from edgekd.registry import Registry

if TYPE_CHECKING:
    from edgekd.profile.result import LatencyResult
    from edgekd.profile.targets import Target


@dataclass(frozen=True)
class Job:
    """One file to time with one runtime; `name` labels the result row."""

    path: Path
    runtime: str
    name: str


@dataclass(frozen=True)
class Runner:
    """How to measure on one or more kinds of target.

    Attributes:
        kinds: the target kinds (the YAML's `kind:`) this runner measures.
        measure: measure(target, jobs, *, threads, progress, timeout_s, **options) -> [LatencyResult per job].
            `timeout_s` bounds each device command (None: the target's own timeouts); options every runner accepts
            are time_cap_s and min_runs; others are runner-specific (local: warmup, input_shape, ...).
        connect_keys: the settings this kind reads from the YAML's `connect:` mapping (others are refused).
        check_connect: extra validation of `connect:` -> list of problems (e.g. a host that is not a host name).
        local: measured on this machine in-process (always reachable, never predicted instead).
        describe_host: for local runners, a readable name of the machine as detected (CPU model, cores).
    """

    kinds: tuple[str, ...]
    measure: Callable[..., "list[LatencyResult]"]
    connect_keys: frozenset[str] = field(default_factory=frozenset)
    check_connect: Callable[[dict[str, Any]], list[str]] | None = None
    local: bool = False
    describe_host: Callable[[], str] | None = None


RUNNERS: Registry[Runner] = Registry("target kind")
_order: list[str] = []  # kinds in registration order
_loaded = False


def register_runner(runner: Runner) -> Runner:
    """Register `runner` under each of its kinds; returns it (usable at module level of a runner file)."""
    for kind in runner.kinds:
        RUNNERS.register(kind)(runner)
        if kind not in _order:
            _order.append(kind)
    return runner


def _load_builtin() -> None:
    global _loaded
    if _loaded:
        return
    _loaded = True
    for mod in pkgutil.iter_modules(__path__):
        if not mod.name.startswith("_"):
            importlib.import_module(f"{__name__}.{mod.name}")


def runner_for(kind: str) -> Runner:
    """The runner of a target kind; an unknown kind fails with the known kinds and the closest match."""
    _load_builtin()
    return RUNNERS.get(kind)


def target_kinds() -> list[str]:
    """Every registered target kind: local ones first, then in registration order."""
    _load_builtin()
    return sorted(_order, key=lambda k: not RUNNERS.get(k).local)


def target_runtimes(target: "Target") -> tuple[str, ...]:
    """The runtimes `target` runs: its YAML's list; a local target also every other runtime registered as runnable
    here (edgekd.formats.RUNTIMES), so that a runtime added in one file is profiled here without editing a YAML."""
    from edgekd.formats import RUNTIMES

    if not runner_for(target.kind).local:
        return tuple(target.runtimes)
    extra = [n for n in RUNTIMES.names() if n not in target.runtimes and RUNTIMES.get(n).available()]
    return (*target.runtimes, *extra)


def file_runtimes(path: str | Path, runtimes: Sequence[str]) -> list[str]:
    """Those of a target's `runtimes` that execute this file type, in the target's order of preference."""
    from edgekd.profile.result import runtimes_for_file

    can = runtimes_for_file(path)
    return [rt for rt in runtimes if rt in can]


def plan_jobs(files: Sequence[str | Path], target: "Target", runtime: str | None = None,
              every_runtime: bool = True, name: Callable[[Path], str] = lambda p: p.name
              ) -> tuple[list[Job], list[Path]]:
    """Jobs for `files` on `target`: each file with every target runtime that runs it (or only the first, or the
    given `runtime`); returns (jobs, files no runtime of the target runs)."""
    jobs, skipped = [], []
    runs = target_runtimes(target)
    for f in map(Path, files):
        if runtime is not None:
            if runtime not in runs:
                raise EdgeKDError(f"runtime {runtime!r} is not listed for target {target.name} (it runs: "
                                  f"{', '.join(runs)})")
            jobs.append(Job(f, runtime, name(f)))
            continue
        rts = file_runtimes(f, runs)
        if not rts:
            skipped.append(f)
        jobs.extend(Job(f, rt, name(f)) for rt in (rts if every_runtime else rts[:1]))
    return jobs, skipped


def measure(target: "Target", jobs: Sequence[Job], *, threads: int | None = None, progress: bool = False,
            timeout_s: float | None = None, **options: Any) -> "list[LatencyResult]":
    """Time `jobs` on `target` with the runner of its kind (threads default to the target's)."""
    if timeout_s is not None and not timeout_s > 0:
        raise EdgeKDError(f"timeout must be a number of seconds > 0, got {timeout_s!r}")
    return runner_for(target.kind).measure(target, list(jobs), threads=threads or target.threads,
                                           progress=progress, timeout_s=timeout_s, **options)


def profile_files(paths: Sequence[str | Path], target: "str | Path | Target" = "cpu-local",
                  runtime: str | None = None, threads: int | None = None, progress: bool = False,
                  timeout_s: float | None = None, **kwargs: Any) -> "list[LatencyResult]":
    """Profile each file on `target` (name, YAML path or Target) with the runner of its kind.

    Each file runs with `runtime`, else the target's first runtime that runs its type. `threads` defaults to the
    target's; keyword arguments go to the runner (profile_file's, profile_android's or profile_ssh's options).
    """
    from edgekd.fileio import existing_model_file
    from edgekd.profile.targets import load_target

    tgt = load_target(target)  # type: ignore[arg-type]
    paths = [existing_model_file(p) for p in paths]
    jobs, skipped = plan_jobs(paths, tgt, runtime, every_runtime=False, name=lambda p: p.stem)
    if skipped:
        f = skipped[0]
        raise EdgeKDError(f"{f.name}: none of this target's runtimes ({', '.join(target_runtimes(tgt))}) runs "
                          f"{f.suffix or 'this'} files; export a format it runs")
    return measure(tgt, jobs, threads=threads, progress=progress, timeout_s=timeout_s, **kwargs)


__all__ = ["Job", "RUNNERS", "Runner", "file_runtimes", "measure", "plan_jobs", "profile_files",
           "register_runner", "runner_for", "target_kinds", "target_runtimes"]
