"""Fan sweep points out through Ray: each point one Ray task (num_gpus=1 on a GPU cluster) running the same
worker command as a local sweep, logging to the same tracking URI.

Every node needs qexp installed and must reach the tracking URI (a tracking server, or a sqlite file on a
shared filesystem); `ray_address` "local" starts a private Ray instance on this machine.
"""
from __future__ import annotations

import os
from typing import Callable

from qexp.config import RunConfig
from qexp.sweep.resume import SweepError
from qexp.sweep.runner import Schedule
from qexp.sweep.worker import run_point

FORWARDED_ENV = ("QEXP_CACHE_DIR", "QEXP_DATA_DIR", "QEXP_TOKENIZER", "QEXP_SHARED_DATA", "HF_HUB_OFFLINE",
                 "HF_DATASETS_OFFLINE")


def import_ray():
    try:
        import ray
    except ImportError:
        raise SweepError("--ray-address needs Ray: pip install 'ray>=2.9' (or qexp[ray])") from None
    return ray


def run_on_ray(todo: list[tuple[int, RunConfig]], start: Callable, done: Callable, uri: str, address: str,
               num_cpus: int | None = None) -> None:
    ray = import_ray()
    if not todo:
        return
    started_here = not ray.is_initialized()
    if started_here:
        if address == "local":
            ray.init(num_cpus=num_cpus, include_dashboard=False, log_to_driver=False)
        else:
            ray.init(address=address, log_to_driver=False)
    try:
        # the driver's cache dir (BF16 reference logits): a shared filesystem path lets all nodes reuse them
        env = {k: os.environ[k] for k in FORWARDED_ENV if k in os.environ}
        gpu_cluster = ray.cluster_resources().get("GPU", 0) > 0
        # max_calls=1: a fresh worker process per point, so nothing (CUDA context, memory) leaks between points
        task = ray.remote(num_gpus=1 if gpu_cluster else 0, num_cpus=1, max_retries=0, max_calls=1)(run_point)
        schedule = Schedule(todo)
        refs = {}

        def submit() -> None:
            while (point := schedule.take()) is not None:
                job = start(*point)
                refs[task.remote(point[1].to_dict(), job.run_id, uri, env)] = job

        try:
            submit()
            while refs:
                ready, _ = ray.wait(list(refs), num_returns=1)
                job = refs.pop(ready[0])
                try:
                    code, log = ray.get(ready[0])
                except ray.exceptions.RayError as e:
                    code, log = 1, f"Ray task failed: {e}"
                schedule.ended(job.index)
                done(job, code, log)
                submit()
        finally:
            for ref in refs:
                ray.cancel(ref, force=True)
    finally:
        if started_here:
            ray.shutdown()
