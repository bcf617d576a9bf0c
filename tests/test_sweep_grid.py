"""Sweep files -> points: axes, group_size handling, task merging, path resolution, one-line errors."""
import itertools
import textwrap
from pathlib import Path

import pytest

from qexp.config import GROUP_SIZES, ConfigError
from qexp.sweep.cli import parse_gpus, parse_sets
from qexp.sweep.grid import load_sweep

REF = Path(__file__).resolve().parent.parent / "configs" / "sweeps" / "reference.yaml"


def _write(tmp_path, text):
    p = tmp_path / "s.yaml"
    p.write_text(textwrap.dedent(text))
    return p


def test_axes_group_sizes_and_task_merge(tmp_path):
    p = _write(tmp_path, """
        name: t
        base: {num_tests: 3}
        grid:
          - {dtype: [int8, fp8], quant: [row, group], group_size: [64, 512], mode: fake, tasks: [ppl, mmlu]}
          - {dtype: int8, quant: row, mode: fake, tasks: [matmul], matmul_shape: [8, 16, 32]}
          - {dtype: int8, quant: row, mode: fake, tasks: [matmul]}
          - {dtype: bf16, quant: none, tasks: [[matmul], [ppl]]}
    """)
    s = load_sweep(p, check=False)
    assert (s.name, s.experiment) == ("t", "sweep-t")
    got = [(c.dtype, c.quant, c.group_size, c.mode, c.tasks, tuple(c.matmul_shape)) for c in s.points]
    default_shape = (2048, 2048, 2048)
    # written order; row points lose group_size (2 -> 1 each); bf16 tasks axis merges into one run
    expected = [("int8", "row", None, "fake", ["mmlu", "ppl", "matmul"], default_shape),
                ("int8", "group", 64, "fake", ["mmlu", "ppl"], default_shape),
                ("int8", "group", 512, "fake", ["mmlu", "ppl"], default_shape),
                ("fp8", "row", None, "fake", ["mmlu", "ppl"], default_shape),
                ("fp8", "group", 64, "fake", ["mmlu", "ppl"], default_shape),
                ("fp8", "group", 512, "fake", ["mmlu", "ppl"], default_shape),
                ("int8", "row", None, "fake", ["matmul"], (8, 16, 32)),
                ("bf16", "none", None, "real", ["ppl", "matmul"], default_shape)]
    assert got == expected
    assert all(c.num_tests == 3 and c.experiment == "sweep-t" for c in s.points)
    assert len({c.config_hash() for c in s.points}) == len(s.points)


def test_reference_sweep_is_the_seed_grid():
    s = load_sweep(REF, {"model": "configs/models/qwen3-1.7b", "load_format": "dummy"}, check=False)
    by_recipe = {c.recipe: c for c in s.points}
    assert len(by_recipe) == len(s.points) == 27
    weight_only = {f"{d}-{g}-{m}" for d, g, m in itertools.product(
        ("int8", "fp8"), ["tensor", "row", *(f"group{n}" for n in GROUP_SIZES)], ("fake", "real"))}
    assert set(by_recipe) == weight_only | {"bf16", "int8-smooth-real", "fp8-smooth-real"}
    assert by_recipe["bf16"].tasks == ["mmlu", "ppl", "throughput", "fidelity", "matmul"]
    for r in weight_only:
        row = "-row-" in r
        assert by_recipe[r].tasks == (["mmlu", "ppl", "throughput", "fidelity", "matmul"] if row
                                      else ["mmlu", "ppl", "fidelity"]), r
    for d in ("int8", "fp8"):
        assert by_recipe[f"{d}-smooth-real"].tasks == ["mmlu", "ppl", "throughput", "fidelity", "matmul"]
    # --set overrides reach every point; the relative model path is made absolute for the workers
    assert all(c.load_format == "dummy" and c.model.endswith("configs/models/qwen3-1.7b") and c.model.startswith("/")
               for c in s.points)


@pytest.mark.parametrize("text, message", [
    ("grid: [{dtype: int4}]", "invalid dtype 'int4'"),
    ("grid: [{dtype: int8, quant: group, group_size: 100}]", "invalid group_size 100"),
    ("grid: [{dtype: int8, quant: row, experiment: x}]", "set experiment once at the top"),
    ("grid: [{dtype: int8, quant: row, bogus: 1}]", "unknown config key(s): bogus"),
    ("grids: []", "unknown key(s) grids"),
    ("grid: 3", "grid must be a list of blocks"),
    ("grid: [{dtype: int8, quant: row, num_tests: abc}]", "wrong type"),
])
def test_bad_sweep_files_fail_with_one_line(tmp_path, text, message):
    with pytest.raises(ConfigError) as e:
        load_sweep(_write(tmp_path, text), check=False)
    assert message in str(e.value) and "\n" not in str(e.value)


def test_unavailable_task_is_refused_before_any_run(tmp_path, monkeypatch):
    import qexp.tasks

    real = qexp.tasks.get_task

    def without_ppl(name):
        if name == "ppl":
            raise KeyError("task 'ppl' is not available in this build (have: matmul)")
        return real(name)

    monkeypatch.setattr(qexp.tasks, "get_task", without_ppl)
    p = _write(tmp_path, "grid: [{dtype: int8, quant: row, mode: fake, tasks: [[matmul], [ppl]]}]")
    assert len(load_sweep(p, check=False).points) == 1
    with pytest.raises(ConfigError) as e:
        load_sweep(p)
    assert str(e.value).endswith("point int8-row-fake ppl,matmul: task 'ppl' is not available in this build (have: matmul)")


def test_cli_value_parsing():
    assert parse_sets(("num_samples=100", "tasks=[mmlu, ppl]", "model=configs/x")) == \
        {"num_samples": 100, "tasks": ["mmlu", "ppl"], "model": "configs/x"}
    assert parse_gpus("0, 2,3") == ["0", "2", "3"] and parse_gpus(None) is None
    for bad in ("0,0", "a,b", ","):
        with pytest.raises(ConfigError):
            parse_gpus(bad)
    with pytest.raises(ConfigError):
        parse_sets(("novalue",))


def test_select_keeps_matching_points_in_order():
    from qexp.sweep.grid import select

    s = load_sweep(REF, check=False)
    picked = select(s, ["bf16", "int8-row-*", "*-smooth-real"])
    assert [p.recipe for p in picked.points] == ["bf16", "int8-row-fake", "int8-row-real", "int8-smooth-real",
                                                 "fp8-smooth-real"]
    assert (picked.name, picked.experiment) == (s.name, s.experiment)
    with pytest.raises(ConfigError, match="matches no point"):
        select(s, ["int4-*"])


def test_local_slots_run_one_point_per_gpu_and_fidelity_leader_first(monkeypatch, tmp_path):
    """run_local with 2 slots: never more than 2 workers, each on its own CUDA_VISIBLE_DEVICES, the first point
    alone, and the points sharing the BF16 reference wait for the first of them (fake workers: `sleep`, no MLflow)."""
    import subprocess
    import time

    from qexp.config import build_config
    from qexp.sweep import runner

    events = []  # (time, "start"/"end", index, gpu)

    def fake_launch(cfg_path, run_id, uri, log_path, gpu=None, env=None):
        assert env == {}  # one point per GPU: the engine's whole memory share
        log_path.write_text(f"point {run_id}")
        events.append((time.monotonic(), "start", int(run_id), gpu))
        return subprocess.Popen(["sleep", "1.0" if run_id == "1" else "0.2"])  # point 1 leads the fidelity points

    monkeypatch.setattr(runner, "fork_launch", fake_launch)
    tasks = [["matmul"], ["fidelity"], ["fidelity"], ["matmul"], ["fidelity"]]
    todo = [(i, build_config(None, {"dtype": "int8", "quant": "row", "mode": "fake", "tasks": t, "seed": i}))
            for i, t in enumerate(tasks)]

    def start(index, cfg):
        return runner.Job(index, cfg, str(index))

    def done(job, code, log):
        assert code == 0 and log == f"point {job.run_id}"
        events.append((time.monotonic(), "end", job.index, None))

    runner.run_local(todo, start, done, "sqlite:///unused.db", ["0", "1"])
    order = [(kind, i) for _, kind, i, _ in events]
    assert sorted(i for kind, i in order if kind == "start") == list(range(5))
    running = 0
    for _, kind, _, _ in events:
        running += 1 if kind == "start" else -1
        assert running <= 2
    assert {gpu for _, kind, _, gpu in events if kind == "start"} == {"0", "1"}
    # the first point runs alone (it fills the shared on-disk caches)
    assert order[:2] == [("start", 0), ("end", 0)]
    # fidelity points 2 and 4 start only after the leader (point 1) ended; point 3 (matmul) is not held back
    leader_end = order.index(("end", 1))
    assert order.index(("start", 2)) > leader_end and order.index(("start", 4)) > leader_end
    assert order.index(("start", 3)) < leader_end


def test_points_share_a_gpu_with_a_memory_share_and_one_lock(monkeypatch):
    """run_local with --per-gpu 3 on one GPU (fake workers): three points at once, each told its part of the
    engine's memory share less a headroom, and the GPU's lock path (timed tasks take it alone: test_gpu_share)."""
    import subprocess

    from qexp.config import build_config
    from qexp.engine.memory import DEFAULT_MEMORY_SHARE, MEMORY_ENV, WORKER_HEADROOM
    from qexp.gpu_share import LOCK_ENV
    from qexp.sweep import runner

    events, envs = [], {}

    def fake_launch(cfg_path, run_id, uri, log_path, gpu=None, env=None):
        log_path.write_text("")
        envs[int(run_id)] = env
        events.append(("start", int(run_id)))
        return subprocess.Popen(["sleep", "0.3"])

    monkeypatch.setattr(runner, "fork_launch", fake_launch)
    todo = [(i, build_config(None, {"dtype": "int8", "quant": "row", "mode": "fake", "tasks": ["ppl"], "seed": i}))
            for i in range(7)]
    runner.run_local(todo, lambda i, cfg: runner.Job(i, cfg, str(i)),
                     lambda job, code, log: events.append(("end", job.index)), "sqlite:///unused.db", ["0"], 3)
    running, peak = 0, 0
    for kind, _ in events:
        running += 1 if kind == "start" else -1
        peak = max(peak, running)
    assert peak == 3 and len(envs) == 7
    assert {e[MEMORY_ENV] for e in envs.values()} == {f"{DEFAULT_MEMORY_SHARE / 3 - WORKER_HEADROOM:.4f}"}
    locks = {e[LOCK_ENV] for e in envs.values()}
    assert len(locks) == 1 and locks.pop().endswith("gpu-0.lock")


def test_memory_share_comes_from_the_environment(monkeypatch):
    from qexp.engine.memory import DEFAULT_MEMORY_SHARE, MEMORY_ENV, memory_share

    monkeypatch.delenv(MEMORY_ENV, raising=False)
    assert memory_share() == DEFAULT_MEMORY_SHARE and memory_share(0.5) == 0.5
    monkeypatch.setenv(MEMORY_ENV, "0.2833")
    assert memory_share() == 0.2833 and memory_share(0.5) == 0.5


@pytest.mark.parametrize("args, message", [
    (["missing.yaml"], "error: config file not found: missing.yaml"),
    ([REF, "--per-gpu", "2", "--ray-address", "local"], "error: --per-gpu applies to this machine's GPUs"),
    ([REF, "--gpus", "0", "--ray-address", "local"], "error: choose one of --gpus"),
    ([REF, "--gpus", "x"], "error: --gpus takes distinct comma-separated GPU ids"),
    ([REF, "--set", "bogus=1"], "unknown config key(s): bogus"),
    ([REF, "--only", "int4-*", "--dry-run"], "matches no point"),
])
def test_sweep_cli_errors_are_one_line(args, message, monkeypatch, tmp_path):
    from click.testing import CliRunner

    from qexp.cli import main

    monkeypatch.setattr("qexp.sweep.grid.check_available", lambda sweep, where: None)
    res = CliRunner().invoke(main, ["sweep", *map(str, args)])
    assert res.exit_code == 2 and message in res.output and res.output.count("\n") == 1, res.output


def test_ray_missing_is_a_clear_error(monkeypatch):
    import sys

    from qexp.sweep.ray_backend import import_ray
    from qexp.sweep.resume import SweepError

    monkeypatch.setitem(sys.modules, "ray", None)  # import ray -> ImportError
    with pytest.raises(SweepError, match=r"--ray-address needs Ray: pip install"):
        import_ray()
