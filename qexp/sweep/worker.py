"""One sweep point in its own process: `python -m qexp run --config <point.yaml>` resuming a pre-made child run.

A separate process per point isolates GPU memory and crashes, lets `--gpus` pin one device per point
(CUDA_VISIBLE_DEVICES), and is the same command a Ray task runs on another machine. The child run is created
by the sweep first and handed over through MLFLOW_RUN_ID, which mlflow.start_run picks up.
"""
from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

from qexp.config import RunConfig
from qexp.tracking import tracking_uri

LOG_ARTIFACT = "sweep/worker.log"


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


def worker_env(run_id: str, uri: str, gpu: str | None = None) -> dict[str, str]:
    env = dict(os.environ, MLFLOW_RUN_ID=run_id, MLFLOW_TRACKING_URI=uri, PYTHONUNBUFFERED="1")
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


def stop(proc: subprocess.Popen, grace_s: float = 15.0) -> None:
    """SIGINT first (the worker's run then ends itself KILLED with its traceback), SIGKILL after `grace_s`."""
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGINT)
    try:
        proc.wait(grace_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


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


def _die_with_parent() -> None:
    if sys.platform.startswith("linux"):
        PR_SET_PDEATHSIG = 1
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
