"""Run a sweep: open (or resume) its parent run, skip finished points, run the rest, one worker per slot.

Slots are the GPUs of `--gpus` (or this machine's default device), `per_gpu` points each at once (a timed task,
throughput, still has its GPU alone: qexp.gpu_share); with `ray_address` the points go to
Ray instead (qexp.sweep.ray_backend). Whatever stops the sweep, every child it started ends FINISHED, FAILED
or KILLED; only SIGKILL can leave RUNNING children, and the next run of the sweep marks those KILLED.
"""
from __future__ import annotations

import os
import signal
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from mlflow.tracking import MlflowClient
from rich.console import Console

from qexp.config import RunConfig
from qexp.engine.memory import MEMORY_ENV, shared_memory_share
from qexp.gpu_share import LOCK_ENV
from qexp.sweep import resume
from qexp.sweep.grid import Sweep
from qexp.sweep.worker import LOG_ARTIFACT, absolute_tracking_uri, exit_code, fork_launch, stop, write_point_config


@dataclass
class SweepResult:
    parent_run_id: str
    total: int
    skipped: int = 0
    stale: int = 0
    finished: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    wall_s: float = 0.0

    @property
    def complete(self) -> bool:
        return self.skipped + len(self.finished) == self.total


@dataclass
class Job:
    index: int
    cfg: RunConfig
    run_id: str
    started: float = field(default_factory=time.perf_counter)


def run_sweep(sweep: Sweep, *, gpus: list[str] | None = None, ray_address: str | None = None, fresh: bool = False,
              per_gpu: int = 1, console: Console | None = None) -> SweepResult:
    console = console or Console(stderr=True, soft_wrap=True)
    uri = absolute_tracking_uri()
    client = MlflowClient(uri)
    parent = resume.open_parent(client, sweep, fresh)
    pid = parent.info.run_id
    entry_run = os.environ.pop("MLFLOW_RUN_ID", None)  # under `mlflow run`: point its run at the sweep's parent
    if entry_run:
        client.set_tag(entry_run, "qexp.sweep.parent", pid)
    result = SweepResult(pid, len(sweep.points))
    result.stale = len(resume.mark_stale(client, parent))
    states = resume.point_states(client, parent, sweep)
    todo = [(i, s.cfg) for i, s in enumerate(states) if s.finished_run is None]
    result.skipped = len(states) - len(todo)
    console.print(f"sweep [bold]{sweep.name}[/]: {len(states)} points, {result.skipped} already finished, "
                  f"{len(todo)} to run, {result.stale} interrupted runs marked KILLED (parent run {pid})")
    t0 = time.perf_counter()
    jobs: dict[str, Job] = {}

    def start(index: int, cfg: RunConfig) -> Job:
        job = Job(index, cfg, resume.create_child(client, parent, cfg, index))
        jobs[job.run_id] = job
        return job

    def done(job: Job, code: int, log: str) -> None:
        client.log_text(job.run_id, log, LOG_ARTIFACT)
        if code != 0:
            last = next((line for line in reversed(log.splitlines()) if line.strip()), "")
            resume.end_child(client, job.run_id, "FAILED", f"worker exited with code {code}: {last}")
        status = client.get_run(job.run_id).info.status
        (result.finished if status == "FINISHED" else result.failed).append(job.run_id)
        n = result.skipped + len(result.finished) + len(result.failed)
        colour = "green" if status == "FINISHED" else "red"
        console.print(f"[{n}/{len(states)}] {job.cfg.recipe:<22} {','.join(job.cfg.tasks):<28} "
                      f"[{colour}]{status}[/] in {time.perf_counter() - job.started:.1f}s (run {job.run_id})")
        jobs.pop(job.run_id)

    status = "FAILED"
    try:
        with _sigterm_as_interrupt():
            if ray_address:
                from qexp.sweep.ray_backend import run_on_ray

                run_on_ray(todo, start, done, uri, ray_address)
            else:
                run_local(todo, start, done, uri, gpus or [None], per_gpu)
        status = "FINISHED" if result.complete else "FAILED"
    except KeyboardInterrupt:
        status = "KILLED"
        raise
    finally:
        for run_id in list(jobs):  # started but not reported: interrupted
            resume.end_child(client, run_id, "KILLED", "interrupted: the sweep was stopped")
        result.wall_s = time.perf_counter() - t0
        for key, value in {"sweep.points_total": result.total, "sweep.points_skipped": result.skipped,
                           "sweep.points_finished": len(result.finished), "sweep.points_failed": len(result.failed),
                           "sweep.wall_s": result.wall_s}.items():
            client.log_metric(pid, key, value)
        client.set_terminated(pid, status=status)
    return result


class Schedule:
    """Hands out points in sweep order, with two waits. The first point runs alone: it fills the on-disk caches
    every point reads (dummy weights, converted datasets, token ids). Points sharing the BF16 reference logits
    (fidelity) wait until the first of them has ended: it computes and caches the reference, the others read it."""

    def __init__(self, todo: list[tuple[int, RunConfig]]):
        self.pending = list(todo)
        self.first = todo[0][0] if todo else None
        shared = [i for i, cfg in todo if "fidelity" in cfg.tasks]
        self.leader = shared[0] if shared else None

    def take(self) -> tuple[int, RunConfig] | None:
        if self.first is not None and (not self.pending or self.pending[0][0] != self.first):
            return None  # the first point is running
        for k, (index, cfg) in enumerate(self.pending):
            if self.leader is None or index == self.leader or "fidelity" not in cfg.tasks:
                return self.pending.pop(k)
        return None

    def ended(self, index: int) -> None:
        if index == self.first:
            self.first = None
        if index == self.leader:
            self.leader = None

    def __bool__(self) -> bool:
        return bool(self.pending)


def run_local(todo: list[tuple[int, RunConfig]], start: Callable[[int, RunConfig], Job],
              done: Callable[[Job, int, str], None], uri: str, gpus: list[str | None], per_gpu: int = 1) -> None:
    """Run points as worker processes, `per_gpu` at a time on each GPU, polling for the ones that end. Workers
    sharing a GPU each size their KV cache to their part of the engine's memory share (qexp.engine.memory) and
    take turns for timed tasks through a per-GPU lock (qexp.gpu_share)."""
    schedule = Schedule(todo)
    slots = [gpu for _ in range(per_gpu) for gpu in gpus]  # spread over the GPUs first
    running: dict = {}  # worker process -> (job, gpu, log path)
    with tempfile.TemporaryDirectory(prefix="qexp-sweep-") as d:
        def share_env(gpu) -> dict[str, str]:
            if per_gpu == 1:
                return {}
            return {MEMORY_ENV: f"{shared_memory_share(per_gpu):.4f}", LOCK_ENV: f"{d}/gpu-{gpu}.lock"}

        try:
            while schedule or running:
                while slots and (point := schedule.take()) is not None:
                    index, cfg = point
                    gpu = slots.pop(0)
                    job = start(index, cfg)
                    log_path = Path(d) / f"{job.run_id}.log"
                    proc = fork_launch(write_point_config(cfg, d), job.run_id, uri, log_path, gpu=gpu,
                                       env=share_env(gpu))
                    running[proc] = (job, gpu, log_path)
                for proc in [p for p in running if exit_code(p) is not None]:
                    job, gpu, log_path = running.pop(proc)
                    if hasattr(proc, "lifeline"):
                        proc.lifeline.close()
                    slots.append(gpu)
                    schedule.ended(job.index)
                    done(job, exit_code(proc), log_path.read_text(errors="replace"))
                time.sleep(0.2)
        finally:
            for proc in running:
                stop(proc)


@contextmanager
def _sigterm_as_interrupt():
    """SIGTERM (a scheduler's or `kill`'s) stops the sweep like Ctrl-C: workers are stopped and runs marked."""
    def handler(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")

    try:
        previous = signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not the main thread: leave signals alone
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
