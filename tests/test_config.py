import pytest

from qexp.config import ConfigError, RunConfig, build_config


@pytest.mark.parametrize("overrides, message", [
    ({"dtype": "int4"}, "invalid dtype 'int4'; valid values: bf16, int8, fp8"),
    ({"dtype": "bf16", "quant": "row"}, "dtype=bf16 takes quant=none"),
    ({"dtype": "int8"}, "needs a granularity"),
    ({"dtype": "int8", "quant": "group"}, "quant=group needs --group-size, one of: 64, 128, 256, 512"),
    ({"dtype": "fp8", "quant": "group", "group_size": 100}, "invalid group_size 100"),
    ({"dtype": "int8", "quant": "row", "group_size": 128}, "group_size is only valid with quant=group"),
    ({"dtype": "int8", "quant": "row", "mode": "both"}, "invalid mode"),
    ({"tasks": "matmul,bleu"}, "invalid task 'bleu'"),
    ({"matmul_shape": [1, 2]}, "matmul_shape must be three positive ints"),
    ({"smoothquant_alpha": 1.5}, "smoothquant_alpha must be in [0, 1]"),
    ({"ppl_stride": 4096}, "ppl_stride (4096) must not exceed ppl_context (2048)"),
    ({"num_tests": 0}, "num_tests must be >= 1"),
    ({"bogus": 1}, "unknown config key(s): bogus"),
])
def test_invalid_combinations_are_rejected_with_one_line(overrides, message):
    with pytest.raises(ConfigError) as e:
        build_config(None, overrides)
    assert message in str(e.value)
    assert "\n" not in str(e.value)


def test_valid_grid_points_and_recipe_names():
    assert build_config(None, {}).recipe == "bf16"
    assert build_config(None, {"dtype": "int8", "quant": "row", "mode": "fake"}).recipe == "int8-row-fake"
    cfg = build_config(None, {"dtype": "fp8", "quant": "group", "group_size": "128"})
    assert cfg.group_size == 128 and cfg.recipe == "fp8-group128-real"
    assert build_config(None, {"dtype": "int8", "quant": "smooth"}).recipe == "int8-smooth-real"


def test_yaml_then_cli_precedence(tmp_path):
    p = tmp_path / "run.yaml"
    p.write_text("dtype: int8\nquant: group\ngroup-size: 64\nnum_tests: 7\ntasks: [matmul, ppl]\n")
    cfg = build_config(p, {"group_size": 256, "num_tests": None})
    assert (cfg.dtype, cfg.quant, cfg.group_size) == ("int8", "group", 256)  # CLI beats YAML
    assert cfg.num_tests == 7  # YAML beats default; None means "not given on the CLI"
    assert cfg.tasks == ["matmul", "ppl"]
    assert cfg.seed == RunConfig().seed  # default


def test_yaml_errors_are_config_errors(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        build_config(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("- just\n- a list\n")
    with pytest.raises(ConfigError, match="must hold a mapping"):
        build_config(bad)


def test_config_hash_tracks_results_not_names():
    a = build_config(None, {"dtype": "int8", "quant": "row"})
    b = build_config(None, {"dtype": "int8", "quant": "row", "run_name": "x", "experiment": "other"})
    c = build_config(None, {"dtype": "int8", "quant": "row", "seed": 1})
    assert a.config_hash() == b.config_hash() != c.config_hash()


def test_shipped_run_configs_are_valid():
    from conftest import REPO

    files = sorted((REPO / "configs" / "runs").glob("*.yaml"))
    assert files
    for f in files:
        build_config(f)
