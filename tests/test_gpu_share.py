"""qexp.gpu_share: sweep workers on one GPU overlap their untimed tasks; a timed task runs with no other task."""
import subprocess
import sys
import time

SCRIPT = """
import sys, time
from qexp.gpu_share import task_slot
task, log, hold = sys.argv[1], sys.argv[2], float(sys.argv[3])
with task_slot(task):
    t0 = time.monotonic()
    time.sleep(hold)
    t1 = time.monotonic()
with open(log, "a") as f:
    f.write(f"{task} {t0} {t1}\\n")
"""


def _spawn(task, log, hold, lock):
    env = {"QEXP_GPU_LOCK": str(lock), "PATH": "/usr/bin:/bin"}
    import os
    env["PYTHONPATH"] = os.pathsep.join(sys.path)
    return subprocess.Popen([sys.executable, "-c", SCRIPT, task, str(log), str(hold)], env=env)


def test_timed_task_runs_alone_and_is_not_starved(tmp_path):
    lock, log = tmp_path / "gpu-0.lock", tmp_path / "spans.txt"
    procs = [_spawn("mmlu", log, 1.0, lock), _spawn("ppl", log, 1.0, lock)]
    time.sleep(0.5)  # both untimed tasks hold the GPU, shared
    procs.append(_spawn("throughput", log, 0.5, lock))
    time.sleep(0.3)  # the timed task now waits; a task arriving after it must wait for it
    procs.append(_spawn("fidelity", log, 0.3, lock))
    for p in procs:
        assert p.wait(timeout=60) == 0
    spans = {}
    for line in log.read_text().splitlines():
        task, t0, t1 = line.split()
        spans[task] = (float(t0), float(t1))
    (m0, m1), (p0, p1) = spans["mmlu"], spans["ppl"]
    assert max(m0, p0) < min(m1, p1)  # the two untimed tasks overlapped
    t0, t1 = spans["throughput"]
    assert all(t0 >= end or t1 <= start for task, (start, end) in spans.items() if task != "throughput")
    assert spans["fidelity"][0] >= t1  # queued behind the timed task, not ahead of it


def test_without_the_lock_variable_nothing_waits(monkeypatch):
    from qexp.gpu_share import LOCK_ENV, task_slot

    monkeypatch.delenv(LOCK_ENV, raising=False)
    with task_slot("throughput"), task_slot("throughput"):  # would deadlock if it locked
        pass
