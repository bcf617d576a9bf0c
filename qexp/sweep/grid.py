"""A sweep file -> the list of RunConfigs it names (its points), validated before any run exists.

Format (YAML):
    name: reference                 # identifies the sweep in MLflow (resume finds it by this name)
    experiment: qexp-reference      # MLflow experiment of the parent and every child run
    base: {model: ..., load_format: dummy}     # RunConfig fields shared by every point
    grid:                           # blocks; the points are the union of each block's cartesian product
      - {dtype: [int8, fp8], quant: [tensor, row], mode: [fake, real], tasks: [mmlu, ppl]}

In a block, a list value of a scalar field (dtype, quant, group_size, mode, ...) is an axis; for the list
fields (tasks, matmul_shape) a list is one value and a list of lists an axis. group_size is dropped from
points whose quant is not "group", so one block can cross tensor/row/group with the group sizes. Points
that differ only in their tasks are merged into one run with the union of the tasks (one model load).
"""
from __future__ import annotations

import hashlib
import itertools
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from qexp.config import TASKS, ConfigError, RunConfig, build_config, load_yaml

LIST_FIELDS = ("tasks", "matmul_shape")
PATH_FIELDS = ("model", "tokenizer", "data_dir")
SWEEP_KEYS = ("name", "experiment", "base", "grid")


@dataclass
class Sweep:
    name: str
    experiment: str
    points: list[RunConfig]
    source: str = ""  # the sweep file

    def spec_hash(self) -> str:
        return hashlib.sha256(",".join(p.config_hash() for p in self.points).encode()).hexdigest()[:16]


def load_sweep(path: str | Path, overrides: dict[str, Any] | None = None, check: bool = True) -> Sweep:
    """Parse and expand a sweep file; `overrides` (RunConfig fields) apply to every point. With `check`,
    every recipe and task must also exist in this build."""
    data = load_yaml(path)
    unknown = sorted(set(data) - set(SWEEP_KEYS))
    if unknown:
        raise ConfigError(f"sweep file {path}: unknown key(s) {', '.join(unknown)}; valid keys: {', '.join(SWEEP_KEYS)}")
    name = str(data.get("name") or Path(path).stem)
    base = _mapping(data.get("base") or {}, f"sweep file {path}: base")
    experiment = str(data.get("experiment") or base.pop("experiment", None) or f"sweep-{name}")
    blocks = data.get("grid") or [{}]
    if isinstance(blocks, dict):
        blocks = [blocks]
    if not isinstance(blocks, list):
        raise ConfigError(f"sweep file {path}: grid must be a list of blocks (mappings of field to value(s))")
    raw: list[dict[str, Any]] = []
    for i, block in enumerate(blocks):
        block = _mapping(block, f"sweep file {path}: grid block {i + 1}")
        if "experiment" in block:
            raise ConfigError(f"sweep file {path}: set experiment once at the top, not in grid block {i + 1}")
        raw.extend({**base, **point} for point in expand_block(block))
    roots = [Path.cwd(), *Path(path).resolve().parents]
    points = [_point(_resolve_paths({**values, **(overrides or {})}, roots), experiment, f"sweep file {path}")
              for values in raw]
    sweep = Sweep(name=name, experiment=experiment, points=merge_tasks(points), source=str(path))
    if check:
        check_available(sweep, f"sweep file {path}")
    return sweep


def select(sweep: Sweep, patterns: list[str]) -> Sweep:
    """The points whose recipe matches one of the shell patterns (e.g. bf16, 'int8-row-*'); same sweep identity,
    so a partial run and a later full run share the parent and finished points."""
    import fnmatch

    points = [p for p in sweep.points if any(fnmatch.fnmatchcase(p.recipe, pat) for pat in patterns)]
    if not points:
        raise ConfigError(f"--only {','.join(patterns)} matches no point of sweep {sweep.name} "
                          f"(recipes: {', '.join(dict.fromkeys(p.recipe for p in sweep.points))})")
    return replace(sweep, points=points)


def check_available(sweep: Sweep, where: str) -> None:
    """Every point's recipe and tasks exist in this build (device checks are left to the worker's machine)."""
    from qexp.quant.recipes import recipe_config
    from qexp.tasks import get_task

    for p in sweep.points:
        try:
            recipe_config(p)
            for t in p.tasks:
                get_task(t)
        except (ConfigError, KeyError) as e:
            raise ConfigError(f"{where}: point {p.recipe} {','.join(p.tasks)}: {str(e).strip(chr(39) + chr(34))}") from None


def expand_block(block: dict[str, Any]) -> list[dict[str, Any]]:
    """Cartesian product of a block's axes, in the order written."""
    keys = list(block)
    axes = [_axis(k, block[k]) for k in keys]
    return [dict(zip(keys, combo)) for combo in itertools.product(*axes)]


def merge_tasks(points: list[RunConfig]) -> list[RunConfig]:
    """One point per distinct config-without-tasks, with the union of its tasks in the canonical order."""
    merged: dict[str, RunConfig] = {}
    for p in points:
        key = replace(p, tasks=["matmul"]).config_hash()
        if key in merged:
            have = set(merged[key].tasks) | set(p.tasks)
            merged[key] = replace(merged[key], tasks=[t for t in TASKS if t in have])
        else:
            merged[key] = replace(p, tasks=[t for t in TASKS if t in p.tasks])
    return list(merged.values())


def _axis(key: str, value: Any) -> list:
    key = key.replace("-", "_")
    if key in LIST_FIELDS:
        if isinstance(value, list) and value and all(isinstance(v, list) for v in value):
            return value
        return [value]
    return value if isinstance(value, list) else [value]


def _point(values: dict[str, Any], experiment: str, where: str) -> RunConfig:
    if values.get("quant", "none") != "group":
        values.pop("group_size", None)
    values["experiment"] = experiment
    try:
        return build_config(None, values)
    except TypeError:  # a value of the wrong type (e.g. --set num_samples=abc) fails a comparison in validate()
        bad = {k: v for k, v in values.items() if not isinstance(v, (type(getattr(RunConfig(), k, v)), type(None)))}
        raise ConfigError(f"{where}: value(s) of the wrong type: {bad}") from None
    except ConfigError as e:
        shown = {k: v for k, v in values.items() if k in ("dtype", "quant", "group_size", "mode", "tasks")}
        raise ConfigError(f"{where}: point {shown}: {e}") from None


def _resolve_paths(values: dict[str, Any], roots: list[Path]) -> dict[str, Any]:
    """Relative model/tokenizer/data paths made absolute (workers run elsewhere): found from the current dir or
    a folder above the sweep file (the repo root for configs/sweeps/*.yaml); hub ids are left as they are."""
    out = {k.replace("-", "_"): v for k, v in values.items()}
    for key in PATH_FIELDS:
        value = out.get(key)
        if isinstance(value, str) and value and not Path(value).is_absolute():
            found = next((r / value for r in roots if (r / value).exists()), None)
            if found is not None:
                out[key] = str(found.resolve())
    return out


def _mapping(value: Any, where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ConfigError(f"{where} must be a mapping of RunConfig fields to values")
    return dict(value)
