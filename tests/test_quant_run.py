"""`qexp run` with a SmoothQuant recipe: the runner feeds calibration data and logs the quantization report."""
import json
from pathlib import Path

import mlflow
import pytest
from click.testing import CliRunner

from qexp.cli import main
from qexp.evals import fidelity


@pytest.fixture
def store(mlflow_store, monkeypatch):
    # two short fidelity windows keep the tiny model's BF16 reference quick
    monkeypatch.setattr(fidelity, "NUM_WINDOWS", 2)
    monkeypatch.setattr(fidelity, "WINDOW_LEN", 64)
    return mlflow_store


def test_smoothquant_run_logs_calibration_and_report(store, tiny_model_dir, tokenizer_dir, shared_data):
    args = ["run", "--model", str(tiny_model_dir), "--load-format", "dummy", "--tokenizer", str(tokenizer_dir),
            "--data-dir", str(shared_data), "--device", "cpu", "--dtype", "int8", "--quant", "smooth",
            "--calib-samples", "2", "--calib-data", "mmlu", "--smoothquant-alpha", "0.6", "--tasks", "fidelity"]
    res = CliRunner().invoke(main, args)
    assert res.exit_code == 0, res.output
    (run,) = mlflow.search_runs(search_all_experiments=True, output_format="list")
    m = run.data.metrics
    assert m["quant.modules_expected"] == m["quant.modules_quantized"] == 14
    assert m["quant.num_scales"] == 2 * (3 * 64 + 2 * 32 + 2 * 192)  # one per output row: q,o,down / k,v / gate,up
    assert m["quant.weight_bytes_ratio"] <= 0.55 and m["fidelity.kl_mean"] > 0
    assert run.data.tags["qexp.recipe"] == "int8-smooth-real" and run.data.params["calib_data"] == "mmlu"
    report = json.loads(Path(mlflow.artifacts.download_artifacts(run_id=run.info.run_id,
                                                                 artifact_path="quantization.json")).read_text())
    assert report["calibration"]["batches"] == 2 and report["calibration"]["alpha"] == 0.6
    assert "W8A8 int8" in report["modules"]["model.layers.0.self_attn.o_proj"]


def test_fp8_w8a8_real_on_cpu_fails_before_a_run(store, tiny_model_dir):
    res = CliRunner().invoke(main, ["run", "--model", str(tiny_model_dir), "--load-format", "dummy", "--device", "cpu",
                                    "--dtype", "fp8", "--quant", "smooth", "--tasks", "fidelity"])
    assert res.exit_code == 2 and "--mode fake" in res.output and "Traceback" not in res.output
    assert mlflow.search_runs(search_all_experiments=True, output_format="list") == []
