"""MMLU, standard protocol: lm-eval's own `mmlu` group (5-shot, first 5 dev examples per subject) via QexpLM.

Offline, lm-eval's stock tasks read the local converted dataset through a `dataset_path` override on the group;
a seeded subset is chosen with simple_evaluate's `samples` (question indices per subject task).
"""
from __future__ import annotations

import logging
import random

import pandas as pd

from qexp.evals.data import MMLU_HUB, mmlu_dataset_path
from qexp.evals.lm_tasks import task_manager

CATEGORIES = ("stem", "humanities", "social_sciences", "other")
NUM_FEWSHOT = 5


def sample_questions(sizes: dict[str, int], num_samples: int, seed: int) -> dict[str, list[int]] | None:
    """`num_samples` questions drawn uniformly (seeded) from all subjects' test sets; None = all of them."""
    total = sum(sizes.values())
    if num_samples == 0 or num_samples >= total:
        return None
    flat = [(task, i) for task in sorted(sizes) for i in range(sizes[task])]
    picked: dict[str, list[int]] = {task: [] for task in sorted(sizes)}
    for task, i in sorted(random.Random(seed).sample(flat, num_samples)):
        picked[task].append(i)
    return {t: ids for t, ids in picked.items() if ids}


def load_mmlu_tasks(dataset_path: str, subjects: list[str] | None = None):
    """(TaskManager, the built lm-eval group, its subject tasks {name: Task}): the stock `mmlu` group (or some
    of its subject tasks), with `dataset_path` redirected when it is not the hub's."""
    override = {} if dataset_path == MMLU_HUB else {"dataset_path": dataset_path}
    members = None
    if subjects is not None:
        members = [{"task": f"mmlu_{s}", **override} for s in sorted(subjects)]
    elif override:
        members = [{"group": "mmlu", **override}]
    manager, name = task_manager(["mmlu/default"], members, group="qexp_mmlu")
    name = name or "mmlu"
    loaded = manager.load([name])
    return manager, loaded["groups"][name], loaded["tasks"]


def evaluate_mmlu(lm, cfg, subjects: list[str] | None = None) -> tuple[dict[str, float], dict]:
    """Run lm-eval's mmlu with `lm`; returns (metrics, artifacts). `subjects` restricts it (tests)."""
    from lm_eval import simple_evaluate

    logging.getLogger("lm_eval").setLevel(logging.ERROR)
    manager, top, tasks = load_mmlu_tasks(mmlu_dataset_path(cfg), subjects)
    sizes = {name: len(task.eval_docs) for name, task in tasks.items()}
    samples = sample_questions(sizes, cfg.num_samples, cfg.seed)
    if samples is not None:  # lm-eval evaluates every task it is given (an empty list means all): drop them
        prune(top, keep=set(samples))
    out = simple_evaluate(model=lm, tasks=[top], task_manager=manager, num_fewshot=NUM_FEWSHOT, samples=samples,
                          bootstrap_iters=0, log_samples=True)
    return summarize(out, sizes, samples)


def prune(group, keep: set[str]) -> None:
    """Remove the tasks not in `keep`, and the groups left empty, from `group`'s tree (in place)."""
    from lm_eval.api.group import Group

    for child in list(group):
        if isinstance(child, Group):
            prune(child, keep)
            if not len(child):
                group.pop(child.name)
        elif child.task_name not in keep:
            group.pop(child.task_name)


def summarize(out: dict, sizes: dict[str, int], samples: dict[str, list[int]] | None):
    res = out["results"]
    per_subject = []
    preds = []
    for name in sorted(sizes):
        logged = out["samples"].get(name, [])
        if not logged:
            continue
        per_subject.append({"subject": name.removeprefix("mmlu_"), "acc": res[name]["acc,none"],
                            "n": len(logged), "size": sizes[name]})
        for s in logged:
            lls = [r[0] for r in s["filtered_resps"]]
            preds.append({"subject": name.removeprefix("mmlu_"), "doc_id": s["doc_id"], "target": s["target"],
                          "pred": max(range(len(lls)), key=lls.__getitem__), "acc": s["acc"],
                          "loglikelihoods": lls})
    table = pd.DataFrame(per_subject)
    n = int(table["n"].sum())
    metrics = {"mmlu.acc": float((table["acc"] * table["n"]).sum() / n), "mmlu.num_questions": float(n)}
    for cat in CATEGORIES:
        key = f"mmlu_{cat}"
        if key in res and "acc,none" in res[key]:
            metrics[f"mmlu.acc_{cat}"] = float(res[key]["acc,none"])
    artifacts = {"per_subject": table, "predictions": preds,
                 "sampled_ids": samples or {name: list(range(n)) for name, n in sizes.items()}}
    return metrics, artifacts
