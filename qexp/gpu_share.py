"""Several sweep points on one GPU: their untimed tasks overlap, a timed task (throughput) has the GPU alone.

The sweep gives every worker on a GPU the same lock path ($QEXP_GPU_LOCK). Each task runs holding that lock,
shared; a timed task holds it exclusively, so it starts once the tasks in flight have ended and no other task
starts until it is done (its speed is measured on an otherwise idle GPU; the others' memory stays resident).
A writer-preferring turnstile keeps a stream of shared tasks from starving it. flock locks die with their
process, so a killed worker never leaves the GPU locked. Without $QEXP_GPU_LOCK this does nothing.
"""
from __future__ import annotations

import fcntl
import os
from contextlib import contextmanager

LOCK_ENV = "QEXP_GPU_LOCK"
TIMED_TASKS = frozenset({"throughput"})


@contextmanager
def task_slot(task: str):
    """Hold the GPU for `task`: alone if it is timed, else alongside the other workers' untimed tasks."""
    path = os.environ.get(LOCK_ENV)
    if not path:
        yield
        return
    with open(path + ".turnstile", "a+") as turnstile, open(path, "a+") as gpu:
        if task in TIMED_TASKS:
            fcntl.flock(turnstile, fcntl.LOCK_EX)  # new tasks queue behind this one
            fcntl.flock(gpu, fcntl.LOCK_EX)  # wait for the tasks in flight
        else:
            fcntl.flock(turnstile, fcntl.LOCK_SH)  # blocks while a timed task waits or runs
            fcntl.flock(gpu, fcntl.LOCK_SH)
            fcntl.flock(turnstile, fcntl.LOCK_UN)
        try:
            yield
        finally:
            fcntl.flock(gpu, fcntl.LOCK_UN)
            fcntl.flock(turnstile, fcntl.LOCK_UN)
