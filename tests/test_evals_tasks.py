"""The evaluation tasks end to end: `qexp run` on the tiny model logs every metric and artifact of the contract."""
import json

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


def _artifact(run, path):
    return mlflow.artifacts.download_artifacts(run_id=run.info.run_id, artifact_path=path)


def test_run_all_eval_tasks(store, tiny_model_dir, tokenizer_dir, shared_data):
    args = ["run", "--model", str(tiny_model_dir), "--load-format", "dummy", "--tokenizer", str(tokenizer_dir),
            "--data-dir", str(shared_data), "--device", "cpu", "--dtype", "int8", "--quant", "row", "--mode", "fake",
            "--tasks", "mmlu,ppl,throughput,fidelity", "--num-samples", "8", "--ppl-protocol", "seed", "--ppl-lines", "10",
            "--prompt-length", "8", "--generate-length", "4", "--num-prompts", "2"]
    res = CliRunner().invoke(main, args + ["--run-name", "evals"])
    assert res.exit_code == 0, res.output
    (run,) = mlflow.search_runs(search_all_experiments=True, output_format="list")
    assert run.info.status == "FINISHED"
    m = run.data.metrics
    expected = {"mmlu.acc", "mmlu.num_questions", "ppl.seed_ppl", "throughput.prefill_tok_s",
                "throughput.prefill_samples_s", "throughput.prefill_time_s", "throughput.decode_tok_s",
                "throughput.decode_samples_s", "throughput.decode_time_s", "throughput.bs1_decode_tok_s",
                "fidelity.kl_mean", "fidelity.kl_p99", "fidelity.top1_agree", "fidelity.sqnr_db_mean",
                "time.mmlu_s", "time.ppl_s", "time.throughput_s", "time.fidelity_s"}
    assert expected <= set(m), expected - set(m)
    assert m["mmlu.num_questions"] == 8 and 0 <= m["mmlu.acc"] <= 1
    assert m["fidelity.kl_mean"] > 0 and 0 < m["fidelity.top1_agree"] <= 1  # int8 fake-quant is not lossless
    subjects = open(_artifact(run, "mmlu/per_subject.csv")).read().splitlines()
    assert subjects[0] == "subject,acc,n,size" and sum(int(r.split(",")[2]) for r in subjects[1:]) == 8
    sampled = json.load(open(_artifact(run, "mmlu/sampled_ids.json")))
    assert sum(map(len, sampled.values())) == 8
    assert json.load(open(_artifact(run, "ppl/config.json")))["protocol"] == "seed"
    assert json.load(open(_artifact(run, "throughput/raw.json")))["decode"]["generated_tokens"] == 2 * 4
    assert len(json.load(open(_artifact(run, "fidelity/summary.json")))["per_layer_sqnr_db"]) == 2

    # the seed MMLU protocol, and the BF16 reference now comes from the cache
    res = CliRunner().invoke(main, args[:-16] + ["--tasks", "mmlu,fidelity", "--mmlu-protocol", "seed",
                                                 "--num-samples", "6", "--dtype", "int8", "--quant", "row",
                                                 "--mode", "fake"])
    assert res.exit_code == 0, res.output
    run2 = next(r for r in mlflow.search_runs(search_all_experiments=True, output_format="list")
                if r.info.run_id != run.info.run_id)
    assert run2.data.metrics["mmlu.num_questions"] == 6
    assert json.load(open(_artifact(run2, "fidelity/summary.json")))["reference_cached"] is True
    assert run2.data.metrics["fidelity.kl_mean"] == pytest.approx(m["fidelity.kl_mean"])
