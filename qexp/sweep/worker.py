"""One sweep point in its own process: `qexp run --config <point.yaml>` resuming a pre-made child run.

A separate process per point isolates GPU memory and crashes and lets `--gpus` pin one device per point
(CUDA_VISIBLE_DEVICES). The child run is created by the sweep first and handed over through MLFLOW_RUN_ID,
which mlflow.start_run picks up. Locally, workers are forked from a multiprocessing forkserver that imported
torch, transformers and qexp once (seconds saved per point; CUDA is first touched in the worker); a Ray task
runs the same command as a plain subprocess.
"""
from __future__ import annotations

import ctypes
import multiprocessing
import os
import signal
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

import yaml

from qexp.config import RunConfig
from qexp.tracking import tracking_uri

LOG_ARTIFACT = "sweep/worker.log"
PRELOAD = ["qexp.cli", "qexp.runner", "qexp.tasks.matmul", "qexp.tasks.mmlu", "qexp.tasks.ppl",
           "qexp.tasks.throughput", "qexp.tasks.fidelity", "qexp.engine"]  # missing ones are skipped


def absolute_tracking_uri(uri: str | None = None) -> str:
    """The tracking URI with a relative sqlite path made absolute, so workers in other dirs share the store."""
    uri = uri or tracking_uri()
    prefix = "sqlite:///"
    if uri.startswith(prefix) and not uri[len(prefix):].startswith("/"):
        return prefix + os.path.abspath(uri[len(prefix):])
    return uri


def write_point_config(cfg: RunConfig, directory: str | Path) -> Path:
    path = Path(directory) / f"point-{cfg.config_hash()}.yaml"
    path.write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
    return path


def worker_env(run_id: str, uri: str, gpu: str | None = None, extra: dict[str, str] | None = None) -> dict[str, str]:
    env = dict(os.environ, MLFLOW_RUN_ID=run_id, MLFLOW_TRACKING_URI=uri, PYTHONUNBUFFERED="1", **(extra or {}))
    if gpu is not None:
        env["CUDA_VISIBLE_DEVICES"] = gpu
    return env


def launch(cfg_path: Path, run_id: str, uri: str, log_path: Path, gpu: str | None = None) -> subprocess.Popen:
    """Start the point's worker; it dies with the sweep process (Linux), so a killed sweep leaves no orphan."""
    log = open(log_path, "wb")
    try:
        return subprocess.Popen([sys.executable, "-m", "qexp", "run", "--config", str(cfg_path)],
                                env=worker_env(run_id, uri, gpu), stdout=log, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, preexec_fn=_die_with_parent)
    finally:
        log.close()


def fork_launch(cfg_path: Path, run_id: str, uri: str, log_path: Path, gpu: str | None = None,
                env: dict[str, str] | None = None) -> multiprocessing.Process:
    """Start the point's worker forked from the preloaded forkserver; exit code = `qexp run`'s. `env`: extra
    variables for the worker (its GPU memory share)."""
    # torch.cuda.is_available() at import time (torchao does it) initialises the CUDA driver and so poisons every
    # fork; the NVML-based check answers the same question without it (the forkserver inherits this env)
    os.environ.setdefault("PYTORCH_NVML_BASED_CUDA_CHECK", "1")
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(PRELOAD)
    lifeline, keep = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_forked_point, args=(str(cfg_path), run_id, uri, str(log_path), gpu, lifeline, env),
                       name=f"qexp-point-{run_id}")
    proc.start()
    lifeline.close()
    proc.lifeline = keep  # held (never written) by the sweep: the kernel closes it when the sweep dies
    return proc


def exit_code(proc: subprocess.Popen | multiprocessing.Process) -> int | None:
    return proc.poll() if isinstance(proc, subprocess.Popen) else proc.exitcode


def stop(proc: subprocess.Popen | multiprocessing.Process, grace_s: float = 15.0) -> None:
    """SIGINT first (the worker's run then ends itself KILLED with its traceback), SIGKILL after `grace_s`."""
    if exit_code(proc) is not None:
        return
    os.kill(proc.pid, signal.SIGINT)
    if isinstance(proc, subprocess.Popen):
        try:
            proc.wait(grace_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    else:
        proc.join(grace_s)
        if proc.exitcode is None:
            proc.kill()
            proc.join()


def run_point(cfg_dict: dict, run_id: str, uri: str, env: dict[str, str] | None = None) -> tuple[int, str]:
    """Run one point to completion in a subprocess; (exit code, its output). What a Ray task executes;
    `env` = variables from the driver (cache and data dirs)."""
    os.environ.update(env or {})
    cfg = RunConfig(**cfg_dict)
    with tempfile.TemporaryDirectory(prefix="qexp-point-") as d:
        log_path = Path(d) / "worker.log"
        proc = launch(write_point_config(cfg, d), run_id, uri, log_path, gpu=os.environ.get("CUDA_VISIBLE_DEVICES"))
        try:
            code = proc.wait()
        finally:
            stop(proc)
        return code, log_path.read_text(errors="replace")


def _forked_point(cfg_path: str, run_id: str, uri: str, log_path: str, gpu: str | None, lifeline,
                  env: dict[str, str] | None = None) -> None:
    _exit_with(lifeline)
    _die_with_parent()  # kept across the exec below, where the lifeline thread is not
    fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.environ.update(worker_env(run_id, uri, gpu, env))
    signal.signal(signal.SIGINT, signal.default_int_handler)
    import torch

    if torch.cuda._is_in_bad_fork():  # a preloaded module touched CUDA: start a clean interpreter instead
        print("qexp sweep: CUDA was initialised before the fork; running this point in a fresh interpreter",
              file=sys.stderr, flush=True)
        os.execv(sys.executable, [sys.executable, "-m", "qexp", "run", "--config", cfg_path])
    from qexp.cli import main

    main(["run", "--config", cfg_path], prog_name="qexp")


def _exit_with(lifeline) -> None:
    """Die at once when the sweep process dies, however it dies (SIGKILL included): its end of the pipe closes.
    (The worker's parent is the forkserver, which outlives the sweep by seconds, so PDEATHSIG is not enough.)"""
    def watch() -> None:
        try:
            lifeline.recv()
        except (EOFError, OSError):
            pass
        os.kill(os.getpid(), signal.SIGKILL)

    threading.Thread(target=watch, name="qexp-sweep-lifeline", daemon=True).start()


def _die_with_parent() -> None:
    if sys.platform.startswith("linux"):
        PR_SET_PDEATHSIG = 1
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
