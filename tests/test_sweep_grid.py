"""Sweep files -> points: axes, group_size handling, task merging, path resolution, one-line errors."""
import itertools
import textwrap

import pytest

from qexp.config import GROUP_SIZES, ConfigError
from qexp.sweep.cli import parse_gpus, parse_sets
from qexp.sweep.grid import load_sweep

REF = "configs/sweeps/reference.yaml"


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
    assert by_recipe["bf16"].tasks == ["mmlu", "ppl", "throughput", "matmul"]
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
