"""Sweep state in MLflow: the parent run, its children by config hash, and clean-up of interrupted points.

Resume needs nothing but the tracking store: a point is done when its parent has a FINISHED child with the
point's qexp.config_hash tag. Children left RUNNING by a process that died (SIGKILL, OOM, power) are marked
KILLED so they neither block nor count; a live sweep of the same name on this host is refused instead.
"""
from __future__ import annotations

import os
import socket
from dataclasses import dataclass

from mlflow.entities import Run
from mlflow.tracking import MlflowClient

from qexp.config import RunConfig
from qexp.sweep.grid import Sweep
from qexp.tracking import tracking_uri

PARENT_TAG = "mlflow.parentRunId"
ROLE_TAG = "qexp.sweep.role"
NAME_TAG = "qexp.sweep.name"
HOST_TAG = "qexp.sweep.host"
PID_TAG = "qexp.sweep.pid"
HASH_TAG = "qexp.config_hash"


class SweepError(RuntimeError):
    """The sweep cannot start or go on; one line for the user."""


@dataclass
class PointState:
    cfg: RunConfig
    finished_run: str | None  # id of a FINISHED child, or None when the point must (re)run


def experiment_id(client: MlflowClient, name: str) -> str:
    exp = client.get_experiment_by_name(name)
    return exp.experiment_id if exp is not None else client.create_experiment(name)


def find_parent(client: MlflowClient, exp_id: str, sweep_name: str) -> Run | None:
    """The most recent parent run of the sweep with this name, if any."""
    runs = client.search_runs([exp_id], f"tags.`{ROLE_TAG}` = 'parent' and tags.`{NAME_TAG}` = '{sweep_name}'",
                              order_by=["attributes.start_time DESC"], max_results=1)
    return runs[0] if runs else None


def open_parent(client: MlflowClient, sweep: Sweep, fresh: bool) -> Run:
    """Reuse the sweep's parent run (resume) unless `fresh`; refuse if a live process on this host owns it."""
    exp_id = experiment_id(client, sweep.experiment)
    parent = None if fresh else find_parent(client, exp_id, sweep.name)
    if parent is not None and parent.info.status == "RUNNING":
        owner = _live_owner(parent)
        if owner is not None:
            raise SweepError(f"sweep {sweep.name!r} is already running (pid {owner}, parent run {parent.info.run_id});"
                             " stop it first, or pass --fresh to start a separate sweep")
    if parent is None:
        parent = client.create_run(exp_id, run_name=f"sweep-{sweep.name}",
                                   tags={ROLE_TAG: "parent", NAME_TAG: sweep.name})
    else:
        client.update_run(parent.info.run_id, status="RUNNING")
    run_id = parent.info.run_id
    client.set_tag(run_id, HOST_TAG, socket.gethostname())
    client.set_tag(run_id, PID_TAG, str(os.getpid()))
    client.set_tag(run_id, "qexp.sweep.spec_hash", sweep.spec_hash())
    client.set_tag(run_id, "qexp.sweep.points", str(len(sweep.points)))
    client.log_dict(run_id, {"name": sweep.name, "experiment": sweep.experiment,
                             "points": [{"config_hash": p.config_hash(), **p.to_dict()} for p in sweep.points]},
                    "sweep/points.json")
    if sweep.source and os.path.isfile(sweep.source):
        client.log_artifact(run_id, sweep.source, "sweep")
    return client.get_run(run_id)


def children(client: MlflowClient, parent: Run) -> list[Run]:
    return client.search_runs([parent.info.experiment_id], f"tags.`{PARENT_TAG}` = '{parent.info.run_id}'",
                              max_results=50000)


def mark_stale(client: MlflowClient, parent: Run) -> list[str]:
    """End every child still RUNNING under `parent` as KILLED (its process is gone); return their ids."""
    stale = [r.info.run_id for r in children(client, parent) if r.info.status in ("RUNNING", "SCHEDULED")]
    for run_id in stale:
        end_child(client, run_id, "KILLED", "interrupted: the sweep process ended before this point finished")
    return stale


def point_states(client: MlflowClient, parent: Run, sweep: Sweep) -> list[PointState]:
    done = {r.data.tags.get(HASH_TAG): r.info.run_id for r in children(client, parent) if r.info.status == "FINISHED"}
    return [PointState(p, done.get(p.config_hash())) for p in sweep.points]


def finished_hashes(sweep: Sweep) -> set[str]:
    """Config hashes of the points the sweep's latest parent already finished (read-only; for --dry-run)."""
    client = MlflowClient(tracking_uri())
    exp = client.get_experiment_by_name(sweep.experiment)
    parent = find_parent(client, exp.experiment_id, sweep.name) if exp is not None else None
    if parent is None:
        return set()
    return {r.data.tags.get(HASH_TAG) for r in children(client, parent) if r.info.status == "FINISHED"}


def create_child(client: MlflowClient, parent: Run, cfg: RunConfig, index: int) -> str:
    """The child run a point's worker will resume (through MLFLOW_RUN_ID); created before the worker starts."""
    run = client.create_run(parent.info.experiment_id, run_name=cfg.run_name or cfg.recipe, tags={
        PARENT_TAG: parent.info.run_id, HASH_TAG: cfg.config_hash(), "qexp.recipe": cfg.recipe,
        "qexp.sweep.name": parent.data.tags.get(NAME_TAG, ""), "qexp.sweep.point": str(index)})
    client.update_run(run.info.run_id, status="SCHEDULED")  # RUNNING once its worker starts it
    return run.info.run_id


def end_child(client: MlflowClient, run_id: str, status: str, reason: str) -> None:
    """Mark a child run ended by the sweep (the worker could not do it itself), unless it already ended."""
    if client.get_run(run_id).info.status not in ("RUNNING", "SCHEDULED"):
        return
    client.set_tag(run_id, "qexp.error", reason[:500])
    client.set_terminated(run_id, status=status)


def _live_owner(parent: Run) -> int | None:
    tags = parent.data.tags
    try:
        pid = int(tags.get(PID_TAG, ""))
    except ValueError:
        return None
    if tags.get(HOST_TAG) != socket.gethostname() or pid == os.getpid():
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except PermissionError:
        return pid
    return pid if _is_qexp_process(pid) else None


def _is_qexp_process(pid: int) -> bool:
    """Guard against pid reuse: the live pid must still be a qexp sweep (Linux /proc; elsewhere assume yes)."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return b"sweep" in f.read()
    except OSError:
        return not os.path.isdir("/proc")
