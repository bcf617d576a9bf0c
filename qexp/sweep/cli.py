"""`qexp sweep FILE`: run (or resume) a grid of runs under one MLflow parent run."""
from __future__ import annotations

import sys

import click
import yaml

from qexp.config import ConfigError


@click.command("sweep")
@click.argument("sweep_file", type=click.Path(dir_okay=False))
@click.option("--gpus", help="Comma-separated GPU ids, e.g. 0,1,2,3: one point per GPU at a time, each in its own process.")
@click.option("--per-gpu", type=click.IntRange(1, 16), default=1, show_default=True,
              help="Points run side by side on each GPU (each engine sizes its KV cache to 1/N of the card); a point "
              "with a timed task (throughput) always runs alone on its GPU.")
@click.option("--ray-address", help="Run each point as a Ray task (num_gpus=1 on GPU clusters): a cluster address, "
              "'auto', or 'local' for a private instance on this machine.")
@click.option("--set", "sets", multiple=True, metavar="KEY=VALUE",
              help="Override a run-config field in every point, e.g. --set num_samples=100 (repeatable).")
@click.option("--only", metavar="PATTERNS", help="Run only the points whose recipe matches one of these comma-separated "
              "shell patterns, e.g. 'bf16,int8-row-*' (the rest stay for a later run).")
@click.option("--fresh", is_flag=True, help="Start a new parent run instead of resuming the last one of this sweep.")
@click.option("--dry-run", is_flag=True, help="List the points (and which are already finished) without running.")
@click.option("--report/--no-report", default=True, help="Log `qexp compare` tables and plots to the parent run at the end (default on).")
def sweep_cmd(sweep_file, gpus, per_gpu, ray_address, sets, only, fresh, dry_run, report) -> None:
    """Run a sweep file's grid of experiment runs; re-running it resumes (finished points are skipped)."""
    from qexp.sweep.grid import load_sweep, select
    from qexp.sweep.resume import SweepError

    # `mlflow run` passes every MLproject parameter; "" or "none" there means "not given"
    gpus, ray_address, only = (None if v in ("", "none") else v for v in (gpus, ray_address, only))

    try:
        if gpus and ray_address:
            raise ConfigError("choose one of --gpus (this machine) and --ray-address (a Ray cluster)")
        if per_gpu > 1 and ray_address:
            raise ConfigError("--per-gpu applies to this machine's GPUs, not to --ray-address (Ray places the points)")
        sweep = load_sweep(sweep_file, parse_sets(sets))
        if only:
            sweep = select(sweep, [p.strip() for p in only.split(",") if p.strip()])
        slots = parse_gpus(gpus)
        if dry_run:
            list_points(sweep)
            return
        from qexp.sweep.runner import run_sweep

        result = run_sweep(sweep, gpus=slots or None, ray_address=ray_address or None, fresh=fresh, per_gpu=per_gpu)
    except (ConfigError, SweepError) as e:
        click.echo(f"error: {e}", err=True)
        sys.exit(2)
    except KeyboardInterrupt:
        click.echo("sweep interrupted: running points were stopped and marked KILLED; re-run to resume", err=True)
        sys.exit(130)
    if report:
        from qexp.compare.report import log_report

        log_report(result.parent_run_id)
    done = result.skipped + len(result.finished)
    click.echo(f"sweep {sweep.name}: {done}/{result.total} points finished, {len(result.failed)} failed, "
               f"{result.wall_s:.1f}s (parent run {result.parent_run_id})")
    if not result.complete:
        sys.exit(1)


def parse_sets(sets: tuple[str, ...]) -> dict:
    out = {}
    for item in sets:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"--set takes KEY=VALUE (got {item!r})")
        out[key.strip().replace("-", "_")] = yaml.safe_load(value)
    return out


def parse_gpus(gpus: str | None) -> list[str] | None:
    if not gpus:
        return None
    ids = [g.strip() for g in gpus.split(",") if g.strip()]
    if not ids or not all(g.isdigit() for g in ids) or len(set(ids)) != len(ids):
        raise ConfigError(f"--gpus takes distinct comma-separated GPU ids, e.g. 0,1,2,3 (got {gpus!r})")
    return ids


def list_points(sweep) -> None:
    from qexp.sweep.resume import finished_hashes

    done = finished_hashes(sweep)
    click.echo(f"sweep {sweep.name} (experiment {sweep.experiment}): {len(sweep.points)} points")
    for i, p in enumerate(sweep.points):
        mark = "finished" if p.config_hash() in done else "to run"
        click.echo(f"{i:>3}  {p.recipe:<22} {','.join(p.tasks):<34} {p.config_hash()}  {mark}")
