"""`qexp compare`: print the study's tables from the tracking store; write them and the plots with --out."""
from __future__ import annotations

import sys
from pathlib import Path

import click

from qexp.compare.report import FORMATS


@click.command("compare")
@click.option("--experiment", help="MLflow experiment to read (default qexp).")
@click.option("--sweep", "sweep_run", metavar="RUN_ID|NAME", help="A sweep's parent run id, or the sweep's name (its "
              "latest parent run): compare its child runs (tables and plots are also logged to that run under report/).")
@click.option("--format", "fmt", type=click.Choice(FORMATS), default="md", show_default=True, help="Table format.")
@click.option("--out", type=click.Path(file_okay=False), help="Directory for the tables and the PNG plots.")
def compare_cmd(experiment, sweep_run, fmt, out) -> None:
    """Regenerate the report tables (MMLU, PPL, throughput, matmul error, SmoothQuant, memory, fidelity) and plots."""
    from qexp.compare.report import compare, log_report
    from qexp.compare.runs import CompareError

    if experiment and sweep_run:
        click.echo("error: choose one of --experiment and --sweep", err=True)
        sys.exit(2)
    try:
        text, files = compare(experiment, sweep_run, fmt, Path(out) if out else None)
        if sweep_run:
            log_report(sweep_run)
    except CompareError as e:
        click.echo(f"error: {e}", err=True)
        sys.exit(2)
    click.echo(text)
    for f in files:
        click.echo(f"wrote {f}", err=True)
