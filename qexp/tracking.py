"""MLflow run lifecycle: what every run logs, and how a failing run is recorded (FAILED + traceback)."""
from __future__ import annotations

import contextlib
import importlib.metadata
import json
import os
import subprocess
import tempfile
import traceback
from pathlib import Path
from typing import Any, Iterator

import mlflow

from qexp.config import RunConfig

# MLflow >= 3.7's embedded default; set explicitly so older clients and `mlflow ui` agree on it.
DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"
LIBRARIES = ("torch", "torchao", "transformers", "triton", "mlflow", "lm_eval", "datasets")
# distributions that provide each library, first found wins (GPU images may carry only mlflow-skinny)
_DIST_NAMES = {"lm_eval": ("lm-eval",), "mlflow": ("mlflow", "mlflow-skinny")}


def tracking_uri() -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_TRACKING_URI


def library_versions() -> dict[str, str]:
    out = {}
    for lib in LIBRARIES:
        out[lib] = "not-installed"
        for dist in _DIST_NAMES.get(lib, (lib,)):
            try:
                out[lib] = importlib.metadata.version(dist)
                break
            except importlib.metadata.PackageNotFoundError:
                continue
    return out


def git_commit() -> str:
    """HEAD of the repo this package is run from, with '-dirty' when the tree has changes."""
    root = Path(__file__).resolve().parent.parent
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True,
                             check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True).stdout.strip()
        return sha + ("-dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def device_name(device: str) -> str:
    import torch

    if device.startswith("cuda") and torch.cuda.is_available():
        return torch.cuda.get_device_name(torch.device(device))
    import platform

    return f"cpu ({platform.processor() or platform.machine()})"


def kernel_tables(device: str) -> str:
    """Which tuned tables pick the fused kernels' configs on this device: on a GPU without its own table they
    come from another GPU's tuning (same compute capability), and a run should say so."""
    import torch

    if not (device.startswith("cuda") and torch.cuda.is_available()):
        return "n/a (cpu: reference kernels)"
    from qexp.kernels import configs

    return configs.tables_in_use(torch.device(device).index or 0)


def log_run_context(cfg: RunConfig, device: str) -> None:
    """Params, hashes, versions, device and seeds every run carries."""
    params = {k: _param_str(v) for k, v in cfg.to_dict().items()}
    # Under `mlflow run` the MLproject parameters are already logged as given; MLflow forbids changing them,
    # so a resolved value that differs is logged beside them as resolved.<key>.
    given = mlflow.get_run(mlflow.active_run().info.run_id).data.params
    mlflow.log_params({(f"resolved.{k}" if k in given and given[k] != v else k): v
                       for k, v in params.items() if given.get(k) != v})
    mlflow.set_tags({
        "qexp.config_hash": cfg.config_hash(),
        "qexp.recipe": cfg.recipe,
        "qexp.git_commit": git_commit(),
        "qexp.device": device,
        "qexp.device_name": device_name(device),
        "qexp.kernel_tables": kernel_tables(device),
        **{f"qexp.version.{k}": v for k, v in library_versions().items()},
    })
    mlflow.log_dict(cfg.to_dict(), "config.json")


def _param_str(v: Any) -> str:
    if v is None:
        return "none"
    return ",".join(map(str, v)) if isinstance(v, (list, tuple)) else str(v)


def log_json(obj: Any, artifact_file: str) -> None:
    mlflow.log_dict(json.loads(json.dumps(obj, default=str)), artifact_file)


@contextlib.contextmanager
def tracked_run(cfg: RunConfig, device: str) -> Iterator[mlflow.ActiveRun]:
    """Start (or join, under `mlflow run`) a run; on error log the traceback and end it FAILED.

    Metrics logged before the error stay: MLflow writes each one immediately.
    """
    mlflow.set_tracking_uri(tracking_uri())
    if not os.environ.get("MLFLOW_RUN_ID"):  # `mlflow run` already chose the experiment
        mlflow.set_experiment(cfg.experiment)
    run = mlflow.start_run(run_name=cfg.run_name or cfg.recipe)
    try:
        log_run_context(cfg, device)
        yield run
    except BaseException as exc:
        with tempfile.TemporaryDirectory() as d:
            p = Path(d) / "traceback.txt"
            p.write_text("".join(traceback.format_exception(exc)))
            with contextlib.suppress(Exception):
                mlflow.log_artifact(str(p))
        mlflow.set_tag("qexp.error", f"{type(exc).__name__}: {exc}"[:500])
        mlflow.end_run(status="KILLED" if isinstance(exc, KeyboardInterrupt) else "FAILED")
        raise
    else:
        mlflow.end_run(status="FINISHED")
