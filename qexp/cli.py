"""Command line: `qexp run` (one tracked experiment run)."""
from __future__ import annotations

import os
import sys

import click

from qexp.config import (CALIB_DATA, DEVICES, DTYPES, GROUP_SIZES, LOAD_FORMATS, MODES, PROTOCOLS, QUANTS, TASKS,
                         ConfigError, build_config)


def _fail(msg: str, code: int = 1) -> None:
    click.echo(f"error: {msg}", err=True)
    sys.exit(code)


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@click.version_option(package_name="qexp")
def main() -> None:
    """qexp: LLM quantization experiments on Qwen3 (TorchAO), tracked in MLflow.

    Runs go to $MLFLOW_TRACKING_URI, default sqlite:///mlflow.db (artifacts in ./mlruns);
    browse them with `mlflow ui --backend-store-uri sqlite:///mlflow.db`.
    """


def _choice(values) -> click.Choice:
    return click.Choice([str(v) for v in values])


@main.command("run")
@click.option("--config", "config_file", type=click.Path(dir_okay=False), help="YAML run config; options given here override it.")
@click.option("--model", help="Hub id (default Qwen/Qwen3-1.7B), local model dir, or with --load-format dummy a config.json or its dir.")
@click.option("--load-format", type=_choice(LOAD_FORMATS), help="auto: pretrained weights; dummy: seeded random weights from the config.")
@click.option("--tokenizer", help="Tokenizer dir or hub id (default: the model's; env QEXP_TOKENIZER).")
@click.option("--dtype", type=_choice(DTYPES), help="Weight dtype: bf16 (baseline), int8, fp8 (e4m3).")
@click.option("--quant", type=_choice(QUANTS), help="Granularity: none (bf16), tensor, row, group, smooth (SmoothQuant W8A8).")
@click.option("--group-size", type=click.Choice([str(g) for g in GROUP_SIZES] + ["none"]), help="Group size along K, with --quant group.")
@click.option("--mode", type=_choice(MODES), help="fake: quantize->dequantize, stored bf16; real: stored int8/fp8 (default real).")
@click.option("--smoothquant-alpha", type=float, help="SmoothQuant migration strength in [0, 1] (default 0.5).")
@click.option("--calib-samples", type=int, help="SmoothQuant calibration samples (default 64).")
@click.option("--calib-data", type=_choice(CALIB_DATA), help="SmoothQuant calibration data: wikitext (WikiText-2 validation) or mmlu (dev prompts); never the evaluated split.")
@click.option("--include-lm-head/--no-include-lm-head", default=None, help="Quantize the (tied) lm_head too (default no).")
@click.option("--tasks", help=f"Comma-separated tasks from: {', '.join(TASKS)} (default matmul).")
@click.option("--matmul-shape", type=int, nargs=3, metavar="M N K", help="Matmul-error shape (default 2048 2048 2048).")
@click.option("--num-tests", type=int, help="Matmul-error trials (default 100).")
@click.option("--num-samples", type=int, help="MMLU questions, 0 = all 14,042 (default 1000).")
@click.option("--mmlu-protocol", type=_choice(PROTOCOLS), help="standard: lm-eval mmlu 5-shot; seed: the reference study's.")
@click.option("--ppl-protocol", type=_choice(PROTOCOLS), help="standard: sliding-window token PPL; seed: first N lines.")
@click.option("--ppl-context", type=int, help="Sliding-window context in tokens (default 2048).")
@click.option("--ppl-stride", type=int, help="Sliding-window stride in tokens (default 512).")
@click.option("--ppl-lines", type=int, help="Seed PPL protocol: score the first N non-empty lines, each alone (default 100).")
@click.option("--prompt-length", type=int, help="Throughput prefill prompt length in tokens (default 1000).")
@click.option("--generate-length", type=int, help="Throughput decode length in tokens (default 1000).")
@click.option("--num-prompts", type=int, help="Throughput prompts per test (default 100).")
@click.option("--seed", type=int, help="Seed for data sampling, dummy weights and matmul inputs (default 42).")
@click.option("--device", type=_choice(DEVICES), help="auto (cuda if available), cuda, cpu.")
@click.option("--data-dir", help="Local data dir (mmlu/, wikitext-2-raw/) for offline use; env QEXP_DATA_DIR.")
@click.option("--experiment", help="MLflow experiment name (default qexp).")
@click.option("--run-name", help="MLflow run name (default: the recipe, e.g. int8-row-real).")
def run_cmd(config_file, **opts) -> None:
    """Run one experiment: quantize the model with one recipe, run the tasks, log to MLflow."""
    # `mlflow run` passes every MLproject parameter; "" or "none" there means "not given"
    opts = {k: (None if v in ("", (), "none") else v) for k, v in opts.items()}
    config_file = None if config_file in ("", "none") else config_file
    try:
        cfg = build_config(config_file, opts)
    except ConfigError as e:
        _fail(str(e), 2)
    from qexp.models.loader import ModelLoadError
    from qexp.quant.apply import QuantizationError
    from qexp.runner import execute

    try:
        run_id = execute(cfg)
    except (ConfigError, ModelLoadError, QuantizationError, KeyError) as e:
        _fail(str(e).strip("'\""), 2)
    except Exception as e:  # the traceback is in the run's artifacts; QEXP_DEBUG=1 shows it here
        if os.environ.get("QEXP_DEBUG"):
            raise
        _fail(f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''} (run marked FAILED; traceback "
              "logged as its artifact traceback.txt)")
    _print_metrics(run_id, cfg.recipe)


def _print_metrics(run_id: str, recipe: str) -> None:
    import mlflow
    from rich.console import Console
    from rich.table import Table

    metrics = mlflow.get_run(run_id).data.metrics
    click.echo(f"run {run_id} finished: {recipe}")
    table = Table()
    table.add_column("metric")
    table.add_column("value", justify="right")
    for name in sorted(metrics):
        table.add_row(name, f"{metrics[name]:.6g}")
    Console().print(table)


def _register_subcommands() -> None:
    from qexp.compare.cli import compare_cmd
    from qexp.sweep.cli import sweep_cmd

    main.add_command(sweep_cmd)
    main.add_command(compare_cmd)


_register_subcommands()


if __name__ == "__main__":
    main()
