"""lm-eval TaskManagers over lm-eval's stock task YAMLs, optionally wrapped in a group that overrides their data.

Only the stock dirs a task needs are indexed (indexing all of lm-eval's tasks takes seconds). An override
(e.g. a local `dataset_path`) goes in a one-file include dir: a group YAML whose members are the stock tasks or
groups with the override keys. (Not an inline dict or a YAML path: lm-eval 0.4.13 passes an inline group's own
keys down to its members, and names a group loaded by path after its task list.)
"""
from __future__ import annotations

import hashlib
from pathlib import Path

import lm_eval.tasks
import yaml

from qexp.evals import lm_templates
from qexp.evals.data import atomic_file, cache_dir

lm_templates.install()

STOCK_TASKS = Path(lm_eval.tasks.__file__).parent


def task_manager(stock_dirs: list[str], members: list[dict] | None = None, group: str = "qexp_group"):
    """(TaskManager, name to load). Without `members` the caller loads a stock name itself (name is None)."""
    from lm_eval.tasks import TaskManager

    include = [str(STOCK_TASKS / d) for d in stock_dirs]
    if members is None:
        return TaskManager(include_path=include, include_defaults=False), None
    text = yaml.safe_dump({"group": group, "task": members})
    extra = cache_dir("lm_eval_tasks", hashlib.sha256(text.encode()).hexdigest()[:16])
    path = extra / f"{group}.yaml"
    if not path.is_file():
        with atomic_file(path) as tmp:
            tmp.write_text(text)
    return TaskManager(include_path=include + [str(extra)], include_defaults=False), group
