"""The MLproject entry point and its environment stay in step with the CLI and pyproject.toml."""
import subprocess
import sys
import tomllib

import mlflow
import yaml

from conftest import REPO


def test_python_env_matches_pyproject_dependencies():
    deps = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    env = yaml.safe_load((REPO / "python_env.yaml").read_text())
    assert env["dependencies"] == deps


def test_every_mlproject_parameter_is_passed_to_the_cli():
    from qexp.cli import run_cmd

    main = yaml.safe_load((REPO / "MLproject").read_text())["entry_points"]["main"]
    options = {o.name for o in run_cmd.params} | {"config"}
    for name in main["parameters"]:
        assert name in options, name
        assert "{" + name + "}" in main["command"], name


def test_mlflow_run_creates_a_finished_run(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    cmd = [sys.executable, "-m", "mlflow", "run", str(REPO), "--env-manager", "local", "--experiment-name", "mlp",
           "-P", "dtype=int8", "-P", "quant=group", "-P", "group_size=64", "-P", "mode=fake", "-P", "tasks=matmul",
           "-P", "matmul_shape=8,16,128", "-P", "num_tests=2", "-P", "device=cpu"]
    res = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=300,
                         env={**__import__("os").environ, "MLFLOW_TRACKING_URI": uri})
    assert res.returncode == 0, res.stderr[-2000:]
    mlflow.set_tracking_uri(uri)
    (run,) = mlflow.search_runs(experiment_names=["mlp"], output_format="list")
    assert run.info.status == "FINISHED"
    assert run.data.params["group_size"] == "64" and run.data.params["matmul_shape"] == "8,16,128"
    assert run.data.tags["qexp.recipe"] == "int8-group64-fake"
    assert run.data.metrics["matmul.sqnr_db"] > 30
