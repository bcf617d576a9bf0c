"""Running sweeps for real on CPU: killed mid-way with SIGKILL then resumed, a live sweep refused, the Ray path."""
import contextlib
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
from click.testing import CliRunner
from mlflow.tracking import MlflowClient

from qexp.cli import main
from qexp.compare.tables import TABLES

from qexp.sweep.grid import load_sweep
from qexp.sweep.runner import run_sweep

REPO = Path(__file__).resolve().parent.parent
TINY = REPO / "configs" / "sweeps" / "tiny.yaml"
IN_FLIGHT = {"SCHEDULED", "RUNNING"}


def _children(client, experiment):
    exp = client.get_experiment_by_name(experiment)
    runs = client.search_runs([exp.experiment_id]) if exp else []
    parents = [r for r in runs if r.data.tags.get("qexp.sweep.role") == "parent"]
    kids = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    return parents, kids


def _wait_for(predicate, timeout_s, proc):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return
        assert proc.poll() is None, proc.stdout.read().decode(errors="replace")
        time.sleep(0.1)
    pytest.fail("timed out waiting for the sweep")


def _freeze(pgid, db):
    """SIGSTOP the sweep's process group at a moment it holds no lock that blocks readers of the SQLite store:
    frozen mid-commit it would keep every other process from reading it (CI saw the duplicate sweep fail with
    "database is locked" instead of being refused)."""
    for _ in range(200):
        os.killpg(pgid, signal.SIGSTOP)
        try:
            with contextlib.closing(sqlite3.connect(db, timeout=0.2)) as con:
                con.execute("SELECT count(*) FROM runs").fetchone()
            return
        except sqlite3.OperationalError:
            os.killpg(pgid, signal.SIGCONT)
            time.sleep(0.05)
    pytest.fail("the store stayed locked")


def test_killed_sweep_resumes_with_exactly_one_finished_child_per_point(tmp_path, monkeypatch):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    env = dict(os.environ, MLFLOW_TRACKING_URI=uri)
    # ~2 s of matmul trials per point: a window to kill the sweep while a point is in flight
    cmd = [sys.executable, "-m", "qexp", "sweep", str(TINY), "--set", "num_tests=100", "--no-report"]
    client = MlflowClient(uri)
    sweep = load_sweep(TINY, {"num_tests": 100})
    # its own process group: the sweep, its forkserver and workers can be frozen together (SIGSTOP)
    first = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                             start_new_session=True)
    try:
        statuses = lambda: {r.info.status for r in _children(client, sweep.experiment)[1]}  # noqa: E731
        _wait_for(lambda: bool(statuses()), 120, first)
        # a second copy of the same sweep is refused while the first lives; the first is frozen meanwhile, so
        # on a slow machine it cannot finish all its points before the copy has started up
        _freeze(first.pid, tmp_path / "mlflow.db")
        try:
            dup = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
        finally:
            os.killpg(first.pid, signal.SIGCONT)
        assert dup.returncode == 2 and "is already running" in dup.stderr and len(dup.stderr.splitlines()) == 1
        # kill once a point has FINISHED and the next one is in flight (its worker starting or running); the
        # group is frozen while the state is read, so the point cannot end between the look and the kill
        while True:
            _wait_for(lambda: "FINISHED" in statuses() and statuses() & IN_FLIGHT, 120, first)
            _freeze(first.pid, tmp_path / "mlflow.db")
            _, kids = _children(client, sweep.experiment)
            finished_before = {r.info.run_id for r in kids if r.info.status == "FINISHED"}
            in_flight = [r.info.run_id for r in kids if r.info.status in IN_FLIGHT]
            if finished_before and len(in_flight) == 1:
                break
            os.killpg(first.pid, signal.SIGCONT)
        os.kill(first.pid, signal.SIGKILL)  # the sweep alone; its worker wakes to find it gone
        first.wait()
    finally:
        if first.poll() is None:
            first.kill()
        with contextlib.suppress(ProcessLookupError):
            os.killpg(first.pid, signal.SIGCONT)

    second = subprocess.run(cmd[:-1], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert second.returncode == 0, second.stdout + second.stderr
    assert f"{len(finished_before)} already finished" in second.stderr
    assert "1 interrupted runs marked KILLED" in second.stderr

    parents, kids = _children(client, sweep.experiment)
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    assert all(r.data.tags["mlflow.parentRunId"] == parents[0].info.run_id for r in kids)
    finished = Counter(r.data.tags["qexp.config_hash"] for r in kids if r.info.status == "FINISHED")
    # exactly one per point: also proves the killed point's worker died with its sweep (else it would have
    # finished its run too, a second FINISHED child for that point)
    assert finished == Counter(p.config_hash() for p in sweep.points)
    assert finished_before <= {r.info.run_id for r in kids if r.info.status == "FINISHED"}  # not redone
    stale = client.get_run(in_flight[0])
    assert stale.info.status == "KILLED" and "interrupted" in stale.data.tags["qexp.error"]
    assert {r.info.status for r in kids} == {"FINISHED", "KILLED"}
    # each finished child carries its metrics and the worker's log
    done = next(r for r in kids if r.info.status == "FINISHED")
    assert "matmul.sqnr_db" in done.data.metrics
    assert any(a.path == "sweep/worker.log" for a in client.list_artifacts(done.info.run_id, "sweep"))

    # once complete, running the sweep again does nothing (in-process here: no second interpreter start-up)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    again = run_sweep(sweep)
    assert (again.parent_run_id, again.skipped, again.finished, again.failed) == (parents[0].info.run_id, 3, [], [])

    # the resumed sweep logged its report; `qexp compare --sweep` prints every table from the store
    parent = parents[0].info.run_id
    assert "report/report.md" in {a.path for a in client.list_artifacts(parent, "report")}
    out = CliRunner().invoke(main, ["compare", "--sweep", parent]).output
    assert [line for line in out.splitlines() if line.startswith("## ")] == [f"## {t}" for t, _ in TABLES.values()]
    matmul = out.split("## Matmul error")[1].split("##")[0]
    for r in kids:
        if r.info.status == "FINISHED":
            assert f"| {r.data.tags['qexp.recipe']} | {r.data.metrics['matmul.max_abs_error']:.4g} |" in matmul


def test_ray_backend_runs_points_as_ray_tasks(tmp_path, monkeypatch):
    pytest.importorskip("ray")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/mlflow.db")
    (tmp_path / "ray.yaml").write_text(TINY.read_text().replace("name: tiny", "name: tiny-ray").replace(
        "experiment: qexp-sweep-tiny", "experiment: qexp-sweep-ray").replace(
        "dtype: [int8, fp8]", "dtype: int8"))
    sweep = load_sweep(tmp_path / "ray.yaml", {"model": str(REPO / "configs/models/tiny-qwen3")})
    assert len(sweep.points) == 2
    result = run_sweep(sweep, ray_address="local")
    assert result.complete and len(result.finished) == 2
    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    parents, kids = _children(client, "qexp-sweep-ray")
    assert [p.info.status for p in parents] == ["FINISHED"]
    assert sorted(r.data.tags["qexp.config_hash"] for r in kids) == sorted(p.config_hash() for p in sweep.points)
    assert all(r.info.status == "FINISHED" and "matmul.max_abs_error" in r.data.metrics for r in kids)
    assert run_sweep(sweep, ray_address="local").skipped == 2  # resume: nothing left, Ray not even started


def test_points_run_side_by_side_with_per_gpu(tmp_path, monkeypatch):
    """--per-gpu 3 on this machine's device: the first point alone (it fills the caches), then the other two
    at once; each point FINISHED once."""
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.chdir(tmp_path)
    sweep = load_sweep(TINY, {"num_tests": 100})
    result = run_sweep(sweep, per_gpu=3)
    assert result.complete and len(result.finished) == 3
    _, kids = _children(MlflowClient(uri), sweep.experiment)
    spans = sorted((r.info.start_time, r.info.end_time) for r in kids)
    assert [r.info.status for r in kids] == ["FINISHED"] * 3
    assert spans[1][0] >= spans[0][1] and spans[2][0] >= spans[0][1]  # after the first one
    assert spans[2][0] < spans[1][1]  # the other two in flight together
