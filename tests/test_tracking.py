import json

import mlflow
import pytest
from click.testing import CliRunner

from qexp.cli import main
from qexp.config import build_config
from qexp.runner import execute
from qexp.tasks import TASK_REGISTRY, get_task


@pytest.fixture
def store(mlflow_store):
    return mlflow_store


def _runs():
    return mlflow.search_runs(search_all_experiments=True, output_format="list")


SMALL = ["--matmul-shape", "4", "8", "16", "--num-tests", "2", "--device", "cpu"]


def test_cli_run_logs_params_metrics_tags_and_config(store):
    res = CliRunner().invoke(main, ["run", "--dtype", "int8", "--quant", "row", "--mode", "fake", *SMALL])
    assert res.exit_code == 0, res.output
    (run,) = _runs()
    assert run.info.status == "FINISHED"
    p, m, t = run.data.params, run.data.metrics, run.data.tags
    assert (p["dtype"], p["quant"], p["mode"], p["matmul_shape"], p["group_size"]) == ("int8", "row", "fake",
                                                                                      "4,8,16", "none")
    assert {"matmul.sqnr_db", "matmul.relative_error", "matmul.max_abs_error", "time.matmul_s"} <= set(m)
    cfg = build_config(None, {"dtype": "int8", "quant": "row", "mode": "fake", "matmul_shape": [4, 8, 16],
                              "num_tests": 2, "device": "cpu"})
    assert t["qexp.config_hash"] == cfg.config_hash() and t["qexp.recipe"] == "int8-row-fake"
    for lib in ("torch", "torchao", "transformers", "triton", "mlflow", "lm_eval"):
        assert f"qexp.version.{lib}" in t
    assert t["qexp.device_name"].startswith("cpu") and t["qexp.git_commit"]
    assert t["qexp.kernel_tables"].startswith("n/a")
    local = mlflow.artifacts.download_artifacts(run_id=run.info.run_id, artifact_path="config.json")
    assert json.load(open(local))["matmul_shape"] == [4, 8, 16]


def test_bad_combination_exits_nonzero_with_one_line_and_no_run(store):
    res = CliRunner().invoke(main, ["run", "--dtype", "bf16", "--quant", "row"])
    assert res.exit_code == 2
    assert res.output.strip().count("\n") == 0 and res.output.startswith("error: dtype=bf16 takes quant=none")
    res = CliRunner().invoke(main, ["run", "--config", "missing.yaml"])
    assert res.exit_code == 2 and "config file not found" in res.output
    assert mlflow.search_experiments() == [] or _runs() == []


def test_failing_task_marks_run_failed_keeps_metrics_and_traceback(store, monkeypatch):
    get_task("matmul")

    def broken(ctx):
        raise RuntimeError("fidelity exploded")

    monkeypatch.setitem(TASK_REGISTRY, "fidelity", broken)
    cfg = build_config(None, {"tasks": "matmul,fidelity", "matmul_shape": [4, 8, 16], "num_tests": 1,
                              "device": "cpu"})
    with pytest.raises(RuntimeError, match="fidelity exploded"):
        execute(cfg, show_progress=False)
    (run,) = _runs()
    assert run.info.status == "FAILED"
    assert "matmul.sqnr_db" in run.data.metrics  # logged before the failure, kept
    assert run.data.tags["qexp.error"] == "RuntimeError: fidelity exploded"
    tb = mlflow.artifacts.download_artifacts(run_id=run.info.run_id, artifact_path="traceback.txt")
    assert "fidelity exploded" in open(tb).read() and "Traceback" in open(tb).read()


def test_cli_reports_runtime_failure_in_one_line(store, monkeypatch):
    get_task("matmul")
    monkeypatch.setitem(TASK_REGISTRY, "matmul", lambda ctx: 1 / 0)
    res = CliRunner().invoke(main, ["run", *SMALL])
    assert res.exit_code == 1
    assert res.output.strip().splitlines() == [
        "error: ZeroDivisionError: division by zero (run marked FAILED; traceback logged as its artifact "
        "traceback.txt)"]
    assert _runs()[0].info.status == "FAILED"


@pytest.mark.parametrize("args, message", [
    (["--data-dir", "./no-such-dir"], "error: data dir ./no-such-dir does not exist"),
    (["--tokenizer", "/no/such/tokenizer"], "error: tokenizer dir /no/such/tokenizer does not exist"),
    (["--device", "cpu", "--dtype", "fp8", "--quant", "smooth"], "error: recipe fp8-smooth-real (fp8 W8A8) needs"),
])
def test_missing_paths_and_unsupported_recipes_fail_before_a_run(store, args, message):
    res = CliRunner().invoke(main, ["run", *args])
    assert res.exit_code == 2 and res.output.startswith(message), res.output
    assert mlflow.search_experiments() == [] or _runs() == []
