"""A run: the run context, stage fingerprints, the run-directory lock, publishing and the loop over the stages.

The stages themselves are declared beside their packages and listed by edgekd.stages. Each stage reads earlier
stages' files from the run directory, writes its own into a staging folder, and is recorded in
`<stage>/stage.json` with a fingerprint of its inputs; `run()` skips a stage whose fingerprint and outputs are
unchanged, and a killed training stage resumes from `checkpoints/`. One process at a time works in a run
directory (`run_lock`).

Under torchrun (edgekd.train.distributed) every rank walks the same stages: the training stages (teacher, distill,
quantize) run on every rank, data-parallel; the others run on rank 0 alone. Rank 0 is the one writer: it holds
the lock, publishes the files, writes the records and checkpoints; another rank writes a stage's files into a
scratch folder that is thrown away, and reads rank 0's record after a barrier. TensorBoard events of a stage go to
`<run>/tensorboard/<stage>`.
"""
from __future__ import annotations

import errno
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from edgekd.config import Recipe, dump_recipe
from edgekd.errors import EdgeKDError
from edgekd.fileio import write_text
from edgekd.runlock import run_lock
from edgekd.stages import DEFAULT_TASK, STAGES, Stage, StageRecord, fingerprint, is_done, recipe_stages, \
    recipe_task, require_record, write_record
from edgekd.train import distributed
from edgekd.train.monitor import log_to

if TYPE_CHECKING:
    import torch

    from edgekd.data import ImageDataset


@dataclass
class RunContext:
    recipe: Recipe
    run_dir: Path
    progress: bool = True
    log: Callable[[str], None] = print
    _dataset: "ImageDataset | None" = field(default=None, repr=False)
    records: dict[str, StageRecord] = field(default_factory=dict)
    current: str | None = None  # the running stage: its files go to a staging folder until it succeeds
    fingerprints: dict[str, str] = field(default_factory=dict)

    @property
    def dataset(self) -> "ImageDataset":
        if self._dataset is None:
            from edgekd.data import dataset_from_config

            self._dataset = dataset_from_config(self.recipe.data, self.recipe.seed)
        return self._dataset

    def stage_dir(self, stage: str) -> Path:
        if stage == self.current and distributed.global_rank() != 0:  # one writer: rank 0
            path = scratch_dir(self.run_dir) / stage
            path.mkdir(parents=True, exist_ok=True)
            return path
        path = staging_dir(self.run_dir, stage) if stage == self.current else self.run_dir / stage
        path.mkdir(parents=True, exist_ok=True)
        return path

    def checkpoint(self, name: str) -> Path:
        path = self.run_dir / "checkpoints"
        path.mkdir(parents=True, exist_ok=True)
        return path / f"{name}.pt"

    @property
    def checkpoint_key(self) -> str | None:
        """The running stage's input fingerprint: checkpoints of other inputs are not resumed."""
        return self.fingerprints.get(self.current or "")

    def record(self, stage: str) -> StageRecord:
        if stage not in self.records:
            self.records[stage] = require_record(self.run_dir, stage)
        return self.records[stage]

    def example_input(self, batch: int = 1) -> "torch.Tensor":
        return self.dataset.x_test[:batch].clone()


# Stages whose training is data-parallel under torchrun (every rank runs them); the others run on rank 0 alone.
DISTRIBUTED_STAGES = ("teacher", "distill", "quantize")


def runs_on_every_rank(recipe: Recipe, stage: Stage) -> bool:
    return stage.name in DISTRIBUTED_STAGES and recipe_task(recipe) in (None, DEFAULT_TASK)


def check_devices(recipe: Recipe) -> None:
    """Every training section's device exists on this machine: fail in one line before anything trains."""
    from edgekd.train.device import resolve_device

    for section in ("teacher", "distill", "quantize"):
        train = getattr(getattr(recipe, section, None), "train", None)
        if train is not None and hasattr(train, "device"):
            try:
                resolve_device(train.device)
            except EdgeKDError as e:
                raise EdgeKDError(f"{section}.train.{e}") from None


def scratch_dir(run_dir: Path) -> Path:
    """Where a rank other than 0 writes the files of a stage (thrown away: rank 0's are the run's)."""
    return run_dir / f".rank{distributed.global_rank()}.scratch"


def placement_free(sections: dict[str, Any]) -> dict[str, Any]:
    """Recipe sections without the settings that say where training runs (device, channels_last, compile) and
    without a default fp32 precision: a run moved between CPU and GPU machines keeps its fingerprints."""
    from edgekd.train.config import PLACEMENT_FIELDS

    out = {}
    for name, section in sections.items():
        if isinstance(section, dict) and isinstance(section.get("train"), dict):
            train = {k: v for k, v in section["train"].items() if k not in PLACEMENT_FIELDS}
            if train.get("precision") == "fp32":
                train.pop("precision")
            section = {**section, "train": train}
        out[name] = section
    return out


def data_key(recipe: Recipe) -> dict[str, Any]:
    return {"data": recipe.data.__dict__, "seed": recipe.seed}


def stage_fingerprint(ctx: RunContext, stage: Stage) -> str:
    """sha256 of the stage's recipe sections, the data, its upstream stages' fingerprints and its other inputs."""
    from edgekd import __version__

    rd = ctx.recipe.to_dict()
    upstream = [s for s in ctx.records if s != stage.name] if "*" in stage.upstream else stage.upstream
    ups = [ctx.records[s].fingerprint for s in upstream if s in ctx.records]
    return fingerprint(stage.name, __version__, data_key(ctx.recipe), placement_free({s: rd[s] for s in stage.sections}),
                       ups, stage.inputs(ctx.recipe))


def run(recipe: Recipe | str | Path, *, run_dir: str | Path | None = None, until: str | None = None,
        only: list[str] | None = None, force: bool = False, progress: bool = True,
        log: Callable[[str], None] = print) -> Path:
    """Run the recipe's stages in order, skipping those already done with the same inputs; return the run dir.

    Raises EdgeKDError (one line) when another process holds the run directory, when a stage fails with a user
    error, or when the disk fills up while a stage writes; the failed stage leaves no files behind.
    """
    from edgekd.validate import dry_run

    recipe, dataset = dry_run(recipe)  # every problem at once, before any stage writes to the run directory
    check_devices(recipe)
    run_dir = Path(run_dir) if run_dir else Path(recipe.runs_dir) / recipe.name
    task = recipe_task(recipe)
    for name in list(only or []) + ([until] if until else []):
        STAGES.get(name, task)
    stages = recipe_stages(recipe)
    names = [s.name for s in stages]
    if until:
        stages = stages[: names.index(until) + 1] if until in names else stages
    run_dir.mkdir(parents=True, exist_ok=True)
    if distributed.global_rank() != 0:  # rank 0 holds the lock and writes; this rank trains its share
        return _run_other_rank(recipe, run_dir, stages, dataset, only, force, progress, log)
    # A rank that fails exits non-zero, and torchrun then stops the others: no rank waits for a failed one.
    with run_lock(run_dir):
        with disk_full_as_error("run", run_dir):
            write_text(run_dir / "recipe.yaml", dump_recipe(recipe))
        ctx = RunContext(recipe, run_dir, progress=progress, log=log, _dataset=dataset)
        distributed.barrier()  # the others start once rank 0 holds the lock
        for stage in stages:
            run_stage(ctx, stage, skip=bool(only) and stage.name not in only, force=force)
    return run_dir


def _run_other_rank(recipe: Recipe, run_dir: Path, stages: list[Stage], dataset, only, force: bool,
                    progress: bool, log) -> Path:
    """A rank other than 0: train in the distributed stages, wait for rank 0 through the others, stop after the
    last distributed stage (rank 0 alone finishes the run)."""
    distributed.barrier()
    ctx = RunContext(recipe, run_dir, progress=False, log=lambda _m: None, _dataset=dataset)
    last = max((i for i, s in enumerate(stages) if runs_on_every_rank(recipe, s)), default=-1)
    try:
        for stage in stages[:last + 1]:
            run_stage(ctx, stage, skip=bool(only) and stage.name not in only, force=force)
    finally:
        shutil.rmtree(scratch_dir(run_dir), ignore_errors=True)
    return run_dir


def run_stage(ctx: RunContext, stage: Stage, *, skip: bool = False, force: bool = False) -> StageRecord:
    """Run one stage (or reuse its record when up to date, or when `skip`) and record it.

    Under torchrun every rank calls it for every stage; rank 0 decides whether it runs and alone writes (module
    docstring).
    """
    run_dir, name = ctx.run_dir, stage.name
    fp = stage_fingerprint(ctx, stage)
    if distributed.is_distributed():
        return _run_stage_distributed(ctx, stage, fp, skip, force)
    if skip:
        ctx.records[name] = is_done(run_dir, name, fp) or require_record(run_dir, name)
        return ctx.records[name]
    done = None if force else is_done(run_dir, name, fp)
    if done and not stage.rerun:
        ctx.log(f"{name}: up to date, skipped")
        ctx.records[name] = done
        return done
    return _execute(ctx, stage, fp)


def _run_stage_distributed(ctx: RunContext, stage: Stage, fp: str, skip: bool, force: bool) -> StageRecord:
    """run_stage under torchrun: one decision (rank 0's), every rank trains in a distributed stage, rank 0 writes."""
    run_dir, name, main = ctx.run_dir, stage.name, distributed.global_rank() == 0
    decision = None
    if main:
        done = None if force or skip else is_done(run_dir, name, fp)
        decision = "skip" if skip else ("done" if done and not stage.rerun else "run")
    decision = distributed.broadcast_object(decision)
    if decision == "run":
        every = runs_on_every_rank(ctx.recipe, stage)
        if main:
            if every:
                _execute(ctx, stage, fp)
            else:
                with distributed.local_only():
                    _execute(ctx, stage, fp)
        elif every:
            ctx.current, ctx.fingerprints[name] = name, fp
            try:
                stage.run(ctx)  # its files go to this rank's scratch folder
            finally:
                ctx.current = None
                shutil.rmtree(scratch_dir(run_dir) / name, ignore_errors=True)
        distributed.barrier()  # rank 0 has written the record
    elif decision == "done" and main:
        ctx.log(f"{name}: up to date, skipped")
    if skip:
        ctx.records[name] = is_done(run_dir, name, fp) or require_record(run_dir, name)
    else:
        ctx.records[name] = require_record(run_dir, name)
    return ctx.records[name]


def _execute(ctx: RunContext, stage: Stage, fp: str) -> StageRecord:
    """Run the stage into its staging folder, publish it and write its record (rank 0 / a single process)."""
    run_dir, name = ctx.run_dir, stage.name
    started = time.perf_counter()
    shutil.rmtree(staging_dir(run_dir, name), ignore_errors=True)  # leftovers of a killed run
    ctx.current, ctx.fingerprints[name] = name, fp
    published = False
    try:
        with disk_full_as_error(name, run_dir):
            with log_to(run_dir / "tensorboard" / name):
                outputs, metrics = stage.run(ctx)
            ctx.current = None
            outputs, published = publish_stage(run_dir, name, outputs), True
            ctx.records[name] = write_record(run_dir, name, fp, outputs, metrics, started)
    except BaseException:
        shutil.rmtree(staging_dir(run_dir, name), ignore_errors=True)  # a failed stage leaves nothing behind
        if published:  # its files without their stage.json: never reused, so never left looking published
            shutil.rmtree(run_dir / name, ignore_errors=True)
        raise
    finally:
        ctx.current = None
    ctx.checkpoint(name).unlink(missing_ok=True)  # the stage's files now hold its result
    return ctx.records[name]


class disk_full_as_error:
    """Turn 'no space left on device' while `stage` writes into one EdgeKDError naming the stage and the free space."""

    def __init__(self, stage: str, run_dir: Path):
        self.stage, self.run_dir = stage, run_dir

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind, error, tb) -> bool:
        full = _disk_full(error)
        if full is None:
            return False
        try:
            free = f"{shutil.disk_usage(self.run_dir).free / 2**20:.1f} MiB free"
        except OSError:
            free = "free space unknown"
        target = full.filename
        if hasattr(target, "write"):  # writers given an open file report the file object
            target = getattr(target, "name", None)
        where = f" writing {target}" if target else ""
        raise EdgeKDError(f"{self.stage}: the disk is full{where} ({free} on {self.run_dir}); nothing of this stage "
                          "was kept: free some space and re-run (finished stages are reused)") from error


# How writers that do not raise OSError say the disk is full (torch.save's PytorchStreamWriter, C++ streams).
DISK_FULL_MESSAGES = ("No space left on device", "Disk quota exceeded", "PytorchStreamWriter failed writing",
                      "file write failed")


def _disk_full(error: BaseException | None) -> OSError | None:
    """The ENOSPC/EDQUOT OSError in `error`'s chain (libraries often re-raise it wrapped), else None."""
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT):
            return error
        if isinstance(error, RuntimeError) and any(m in str(error) for m in DISK_FULL_MESSAGES):
            return OSError(errno.ENOSPC, str(error))
        error = error.__cause__ or error.__context__
    return None


def staging_dir(run_dir: Path, stage: str) -> Path:
    return run_dir / f".{stage}.staging"


def publish_stage(run_dir: Path, stage: str, outputs: dict[str, Path]) -> dict[str, Path]:
    """Swap the stage's staging folder in for its previous folder; return the outputs' final paths.

    A stage that fails never reaches this point, so the previous run's files stay as they were.
    """
    staging, final, old = staging_dir(run_dir, stage), run_dir / stage, run_dir / f".{stage}.old"
    staging.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(old, ignore_errors=True)
    if final.exists():
        final.rename(old)
    staging.rename(final)
    shutil.rmtree(old, ignore_errors=True)
    return {k: final / Path(p).resolve().relative_to(staging.resolve()) for k, p in outputs.items()}
