"""One experiment run: load what the tasks need, quantize, run each task, log everything to MLflow."""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import mlflow
from rich.progress import Progress

from qexp.config import ConfigError, RunConfig
from qexp.gpu_share import task_slot
from qexp.models.loader import load_model, load_tokenizer, resolve_device
from qexp.quant.apply import QuantReport, quantize_model
from qexp.quant.calibration import calibration_batches
from qexp.quant.recipes import recipe_config
from qexp.tasks import get_task
from qexp.tracking import log_json, tracked_run


@dataclass
class RunContext:
    """What a task gets: the config, the device, and the (quantized) model and tokenizer, loaded on first use."""

    cfg: RunConfig
    device: str
    progress: Progress | None = None
    quant_report: QuantReport | None = None
    extras: dict[str, Any] = field(default_factory=dict)  # per-run caches shared between tasks
    _task: Any = None

    @cached_property
    def model(self):
        """The run's model: loaded, then quantized with the run's recipe (report logged)."""
        t0 = time.perf_counter()
        m = load_model(self.cfg.model, self.cfg.load_format, self.device, self.cfg.seed)
        mlflow.log_metric("time.model_load_s", time.perf_counter() - t0)
        # SmoothQuant recipes call this for their calibration data (tokenizer and data load only then)
        self.quant_report = quantize_model(
            m, self.cfg, calibration_batches=lambda: calibration_batches(self.cfg, self.tokenizer, self.device))
        mlflow.log_metrics(self.quant_report.metrics())
        log_json(self.quant_report.to_dict(), "quantization.json")
        return m

    @cached_property
    def engine(self):
        """Our paged-attention engine over the (quantized) model: every task scores and generates through it."""
        from qexp.engine import LLM

        # long enough for the PPL windows; a prompt is prefilled in one step, so the batch budget must cover it
        max_len = max(4096, self.cfg.ppl_context + 1)
        return LLM(self.model, max_model_len=max_len, max_num_batched_tokens=max(16384, max_len))

    @cached_property
    def tokenizer(self):
        return load_tokenizer(self.cfg.model, self.cfg.tokenizer)

    def start(self, description: str, total: int | None) -> None:
        if self.progress is not None:
            self._task = self.progress.add_task(description, total=total)

    def advance(self, n: int = 1) -> None:
        if self.progress is not None and self._task is not None:
            self.progress.advance(self._task, n)


def _looks_like_path(s: str) -> bool:
    """A local path rather than a hub id (which is `name` or `org/name`)."""
    return s.startswith((".", "/", "~")) or s.count("/") > 1


TASK_TOTALS = {"matmul": lambda cfg: cfg.num_tests}


def execute(cfg: RunConfig, show_progress: bool = True) -> str:
    """Run every task of `cfg` inside one tracked MLflow run; return its run id."""
    device = resolve_device(cfg.device)
    # everything that can be checked without the model fails here, before a run exists
    tasks = {name: get_task(name) for name in cfg.tasks}
    recipe_config(cfg, device)
    for what, path in (("data dir", cfg.data_dir), ("tokenizer dir", cfg.tokenizer)):
        if path and _looks_like_path(path) and not Path(path).exists():
            raise ConfigError(f"{what} {path} does not exist")
    with tracked_run(cfg, device) as run, Progress(disable=not show_progress, transient=True) as progress:
        ctx = RunContext(cfg, device, progress)
        for name, fn in tasks.items():
            ctx.start(name, TASK_TOTALS.get(name, lambda c: None)(cfg))
            with task_slot(name):  # a sweep sharing the GPU: timed tasks run alone
                t0 = time.perf_counter()
                metrics = fn(ctx)
                mlflow.log_metrics(metrics)
                mlflow.log_metric(f"time.{name}_s", time.perf_counter() - t0)
        return run.info.run_id
