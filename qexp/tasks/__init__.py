"""Task registry: name -> function(ctx: RunContext) -> {metric name: value}. Modules register on import."""
from __future__ import annotations

from typing import Callable

TASK_REGISTRY: dict[str, Callable] = {}


def register_task(name: str):
    def deco(fn):
        TASK_REGISTRY[name] = fn
        return fn
    return deco


def get_task(name: str) -> Callable:
    from qexp.tasks import matmul  # noqa: F401  (import registers)

    for mod in ("mmlu", "ppl", "throughput", "fidelity"):
        try:
            __import__(f"qexp.tasks.{mod}")
        except ModuleNotFoundError as e:
            if e.name != f"qexp.tasks.{mod}":
                raise
    if name not in TASK_REGISTRY:
        raise KeyError(f"task {name!r} is not available in this build (have: {', '.join(sorted(TASK_REGISTRY))})")
    return TASK_REGISTRY[name]
