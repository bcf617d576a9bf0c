"""`qexp compare` on a store of fixture runs: every table cell against values computed here from the logged
numbers, missing cells "—", newest FINISHED value per recipe, the plots, --sweep and the CLI."""

import pandas as pd
import pytest
from click.testing import CliRunner
from mlflow.tracking import MlflowClient

from qexp.cli import main
from qexp.compare.report import compare
from qexp.compare.runs import load
from qexp.compare.tables import all_tables

M = "—"
BASE_T = 1_700_000_000_000
RUNS = {  # recipe -> metrics; start-time order = dict order (later = newer)
    "bf16": {"mmlu.acc": 0.5070, "mmlu.acc_stem": 0.41, "mmlu.num_questions": 1000, "ppl.token_ppl": 10.0,
             "ppl.seed_ppl": 12.0, "throughput.prefill_samples_s": 20.0, "throughput.prefill_time_s": 5.0,
             "throughput.decode_samples_s": 2.0, "throughput.decode_time_s": 50.0, "throughput.prefill_tok_s": 20000.0,
             "throughput.decode_tok_s": 2000.0, "throughput.bs1_decode_tok_s": 100.0, "throughput.peak_mem_gb": 5.5,
             "matmul.max_abs_error": 0.0837, "matmul.mean_abs_error": 0.00915, "matmul.relative_error": 0.0014,
             "matmul.sqnr_db": 55.44, "matmul.frobenius_rel_error": 0.00169, "quant.modules_expected": 0,
             "quant.weight_bytes_before": 0, "quant.weight_bytes_after": 0},
    "int8-row-real@old": {"mmlu.acc": 0.40, "fidelity.kl_p99": 0.5},
    "int8-row-real": {"mmlu.acc": 0.5080, "ppl.token_ppl": 10.1, "throughput.prefill_samples_s": 25.0,
                      "throughput.prefill_time_s": 4.0, "throughput.decode_samples_s": 3.0,
                      "throughput.decode_time_s": 33.3, "throughput.decode_tok_s": 3000.0,
                      "matmul.sqnr_db": 41.5, "quant.modules_expected": 196, "quant.modules_quantized": 196,
                      "quant.weight_bytes_before": 2_818_572_288, "quant.weight_bytes_after": 1_413_480_448,
                      "quant.weight_bytes_ratio": 0.5015, "quant.num_scales": 1_179_648,
                      "fidelity.kl_mean": 0.0123, "fidelity.top1_agree": 0.9612, "fidelity.sqnr_db_mean": 30.25},
    "fp8-group128-fake": {"mmlu.acc": 0.4950, "ppl.token_ppl": 10.5, "mmlu.acc_stem": 0.40},
    "int8-smooth-real": {"mmlu.acc": 0.5000, "ppl.token_ppl": 10.3, "throughput.decode_tok_s": 3500.0},
    "int8-tensor-fake@failed": {"mmlu.acc": 0.90, "ppl.token_ppl": 9.0},
    "fp8-row-fake": {"quant.modules_expected": 196, "quant.num_scales": 100},  # a partial quantization report
}
FIDELITY_SUMMARY = {"per_layer_sqnr_db": [31.5, 28.0, "inf"], "reference_cached": True}


def _log_run(client, exp_id, key, i, tags=None):
    recipe, _, variant = key.partition("@")
    run = client.create_run(exp_id, start_time=BASE_T + i * 1000,
                            tags={"qexp.recipe": recipe, **(tags or {})})
    for name, v in RUNS[key].items():
        client.log_metric(run.info.run_id, name, v)
    client.set_terminated(run.info.run_id, "FAILED" if variant == "failed" else "FINISHED")
    return run.info.run_id


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    d = tmp_path_factory.mktemp("compare")
    mp = pytest.MonkeyPatch()
    uri = f"sqlite:///{d}/mlflow.db"
    mp.setenv("MLFLOW_TRACKING_URI", uri)
    mp.chdir(d)
    client = MlflowClient(uri)
    exp_id = client.create_experiment("cmp")
    ids = {key: _log_run(client, exp_id, key, i) for i, key in enumerate(RUNS)}
    client.log_dict(ids["int8-row-real"], FIDELITY_SUMMARY, "fidelity/summary.json")
    client.create_run(exp_id, tags={"qexp.sweep.role": "parent"})  # no recipe: never a table row
    # a sweep: parent + two children in their own experiment
    sweep_exp = client.create_experiment("sweep-exp")
    parent = client.create_run(sweep_exp, tags={"qexp.sweep.role": "parent", "qexp.sweep.name": "s1"}).info.run_id
    for i, key in enumerate(("bf16", "int8-row-real")):
        _log_run(client, sweep_exp, key, i, {"mlflow.parentRunId": parent})
    _log_run(client, sweep_exp, "fp8-group128-fake", 5)  # same experiment, not a child
    yield {"dir": d, "parent": parent, "uri": uri}
    mp.undo()


def pct(v):
    return f"{v * 100:.2f}%"


def test_tables_cell_by_cell(store):
    t = {name: df for name, (_, df) in all_tables(load("cmp")).items()}
    b, r8, f8, sq = RUNS["bf16"], RUNS["int8-row-real"], RUNS["fp8-group128-fake"], RUNS["int8-smooth-real"]
    d = lambda a, base: f"{pct(a)} ({(a - base) * 100:+.2f}%)"  # noqa: E731

    real, fake = t["mmlu_real"], t["mmlu_fake"]
    assert list(real.index) == ["BF16", "per-tensor", "per-row", "group-64", "group-128", "group-256",
                                "group-512", "SmoothQuant (W8A8)"] and list(real.columns) == ["INT8", "FP8"]
    assert real.loc["BF16", "INT8"] == real.loc["BF16", "FP8"] == pct(b["mmlu.acc"])
    assert real.loc["per-row", "INT8"] == d(r8["mmlu.acc"], b["mmlu.acc"]) == "50.80% (+0.10%)"
    assert real.loc["SmoothQuant (W8A8)", "INT8"] == d(sq["mmlu.acc"], b["mmlu.acc"])
    assert fake.loc["group-128", "FP8"] == d(f8["mmlu.acc"], b["mmlu.acc"])
    assert fake.loc["per-tensor", "INT8"] == M  # only a FAILED run has it
    assert (real.drop(index=["BF16", "per-row", "SmoothQuant (W8A8)"]) == M).all().all()
    assert real.loc["per-row", "FP8"] == M

    cats = t["mmlu_categories"]
    assert cats.loc["fp8-group128-fake", "STEM"] == pct(0.40) and cats.loc["fp8-group128-fake", "Humanities"] == M
    assert cats.loc["bf16", "Questions"] == "1000"

    ppl = t["perplexity"]
    assert list(ppl.index) == ["bf16", "int8-row-real", "int8-smooth-real", "fp8-group128-fake"]
    assert ppl.loc["int8-row-real", "PPL"] == f"{r8['ppl.token_ppl']:.3f}"
    assert ppl.loc["int8-row-real", "vs BF16"] == f"{(r8['ppl.token_ppl'] / b['ppl.token_ppl'] - 1) * 100:+.2f}%" == "+1.00%"
    assert ppl.loc["bf16", "vs BF16"] == "+0.00%" and ppl.loc["bf16", "Seed PPL"] == "12.000"
    assert ppl.loc["int8-row-real", "Seed PPL"] == ppl.loc["int8-row-real", "Seed vs BF16"] == M

    tp = t["throughput"]
    assert list(tp.index) == ["bf16", "int8-row-real"]
    assert tp.loc["int8-row-real", "Prefill samples/s"] == "25.00"
    assert tp.loc["int8-row-real", "Prefill speedup"] == f"{25.0 / 20.0:.2f}x" == "1.25x"
    assert tp.loc["int8-row-real", "Decode speedup"] == f"{3.0 / 2.0:.2f}x"
    assert tp.loc["int8-row-real", "Decode time (s)"] == "33.30"

    tok = t["tokens_per_second"]
    assert list(tok.index) == ["bf16", "int8-row-real", "int8-smooth-real"]
    assert tok.loc["int8-smooth-real", "Decode tok/s"] == "3,500"
    assert tok.loc["int8-smooth-real", "Decode vs BF16"] == f"{3500 / 2000:.2f}x"
    assert tok.loc["int8-smooth-real", "Prefill tok/s"] == tok.loc["int8-smooth-real", "Prefill vs BF16"] == M
    assert tok.loc["bf16", "Peak mem (GB)"] == "5.50"

    mm = t["matmul_error"]
    assert list(mm.index) == ["bf16", "int8-row-real"]
    assert mm.loc["bf16", "Max abs error"] == "0.0837" and mm.loc["bf16", "SQNR (dB)"] == "55.44"
    assert mm.loc["int8-row-real", "SQNR (dB)"] == "41.50" and mm.loc["int8-row-real", "Max abs error"] == M

    s = t["smoothquant"]
    assert list(s.index) == ["int8-smooth-real"]
    assert s.loc["int8-smooth-real", "Best weight-only"] == "int8-row-real"  # the failed int8-tensor is not a candidate
    assert s.loc["int8-smooth-real", "MMLU SQ"] == pct(0.5) and s.loc["int8-smooth-real", "MMLU WO"] == pct(0.508)
    assert s.loc["int8-smooth-real", "MMLU SQ − WO"] == f"{(0.5 - 0.508) * 100:+.2f}%" == "-0.80%"
    assert s.loc["int8-smooth-real", "Decode tok/s WO"] == "3,000"

    mem = t["memory"]
    assert mem.loc["int8-row-real", "Modules quantized"] == "196/196"
    assert mem.loc["int8-row-real", "Weights before (MiB)"] == f"{2_818_572_288 / 2**20:,.1f}" == "2,688.0"
    assert mem.loc["int8-row-real", "Weights after (MiB)"] == f"{1_413_480_448 / 2**20:,.1f}"
    assert mem.loc["int8-row-real", "Scales"] == "1,179,648" and mem.loc["int8-row-real", "Ratio"] == "0.501"
    assert (mem.loc["bf16"].drop("Peak mem (GB)") == M).all()  # bf16 quantizes nothing: no invented zeros
    assert list(mem.loc["fp8-row-fake"]) == [M, M, M, M, "100", M]

    fid = t["fidelity"]
    assert list(fid.index) == ["int8-row-real"]
    assert fid.loc["int8-row-real", "Top-1 agree"] == pct(0.9612) and fid.loc["int8-row-real", "KL mean"] == "0.0123"
    assert fid.loc["int8-row-real", "KL p99"] == "0.5"  # only the older run logged it: newest non-missing value
    assert fid.loc["int8-row-real", "SQNR mean (dB)"] == "30.25"


def test_cli_formats_files_and_plots(store, tmp_path):
    runner = CliRunner()
    res = runner.invoke(main, ["compare", "--experiment", "cmp", "--format", "csv", "--out", str(tmp_path)])
    assert res.exit_code == 0, res.output
    ppl = pd.read_csv(tmp_path / "perplexity.csv", index_col=0, keep_default_na=False)
    assert ppl.loc["int8-row-real", "vs BF16"] == "+1.00%" and ppl.loc["fp8-group128-fake", "Seed PPL"] == M
    for png in ("accuracy_vs_throughput.png", "ppl_delta_by_granularity.png", "per_layer_sqnr.png"):
        assert (tmp_path / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", png
    md = runner.invoke(main, ["compare", "--experiment", "cmp"])
    assert "| per-row | 50.80% (+0.10%) | — |" in md.output
    assert "## Fidelity vs BF16" in md.output
    html = runner.invoke(main, ["compare", "--experiment", "cmp", "--format", "html"])
    assert html.output.count("<table") == 10 and "50.80% (+0.10%)" in html.output


def test_sweep_mode_reads_children_and_logs_report_to_parent(store, tmp_path):
    text, files = compare(None, store["parent"], "md", tmp_path)
    assert "fp8-group128-fake" not in text and "| per-row | 50.80% (+0.10%) | — |" in text
    # the sweep's int8-row-real child logged no per-layer artifact: no per-layer plot
    assert sorted(f.name for f in files) == ["accuracy_vs_throughput.png", "ppl_delta_by_granularity.png", "report.md"]
    res = CliRunner().invoke(main, ["compare", "--sweep", store["parent"]])
    assert res.exit_code == 0, res.output
    by_name = CliRunner().invoke(main, ["compare", "--sweep", "s1"])  # the sweep's name finds its parent too
    assert by_name.exit_code == 0 and by_name.output == res.output
    logged = {a.path for a in MlflowClient(store["uri"]).list_artifacts(store["parent"], "report")}
    assert {"report/report.md", "report/report.html", "report/perplexity.csv",
            "report/ppl_delta_by_granularity.png"} <= logged
    assert "report/accuracy_vs_throughput.png" in logged  # bf16 and int8-row-real have MMLU and decode tok/s


def test_plots_are_skipped_without_data(store, tmp_path):
    from qexp.compare import plots

    df = load("cmp").drop(index="bf16")
    assert plots.ppl_delta_by_granularity(df, tmp_path / "p.png") is None  # no BF16 baseline: no deltas
    assert plots.per_layer_sqnr({}, tmp_path / "l.png") is None
    assert not list(tmp_path.iterdir())


def test_unknown_experiment_or_run_is_one_line_error(store):
    for args in (["--experiment", "nope"], ["--sweep", "0" * 32], ["--experiment", "cmp", "--sweep", "x"]):
        res = CliRunner().invoke(main, ["compare", *args])
        assert res.exit_code == 2 and res.output.count("\n") == 1 and res.output.startswith("error:"), res.output


def test_per_layer_sqnr_read_from_the_fidelity_artifact(store):
    from qexp.compare.report import per_layer_sqnr
    from qexp.compare.runs import search

    # only int8-row-real logged the artifact; its "inf" layer (identical outputs) is left off the curve
    assert per_layer_sqnr(search("cmp")) == {"int8-row-real": {"0": 31.5, "1": 28.0}}
