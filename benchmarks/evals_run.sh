#!/usr/bin/env bash
# The full default evaluation (MMLU 1000 + PPL + throughput + fidelity) of Qwen3-1.7B with dummy weights in BF16,
# then int8 row-wise (real), then every run's metrics as JSON. On the device machine:
#   source scripts/device_env.sh; bash benchmarks/evals_run.sh "$OUT"
# Extra `qexp run` options (e.g. smaller sizes for a CPU dry run) go in $QEXP_BENCH_ARGS.
set -uo pipefail
out=${1:?output dir}
mkdir -p "$out"
export MLFLOW_TRACKING_URI=sqlite:////tmp/evals_bench.db QEXP_CACHE_DIR=${QEXP_CACHE_DIR:-/tmp/qexp_cache}
model=${QEXP_BENCH_MODEL:-configs/models/qwen3-1.7b}
# the BF16 run is the full default evaluation; the int8 run skips throughput (the engine's and kernels' benchmarks
# cover it) to save device time, and finds the BF16 fidelity reference in the cache
for recipe in "--dtype bf16 --tasks mmlu,ppl,throughput,fidelity" "--dtype int8 --quant row --mode real --tasks mmlu,ppl,fidelity"; do
  start=$(date +%s.%N)
  # shellcheck disable=SC2086
  python3 -m qexp run --model "$model" --load-format dummy \
    --experiment evals-bench $recipe ${QEXP_BENCH_ARGS:-} >>"$out/evals_run.log" 2>&1
  rc=$?; echo "$recipe: exit $rc after $(python3 -c "print(round($(date +%s.%N) - $start, 1))") s (process wall, imports included)" \
    | tee -a "$out/evals_run.log"
done
python3 - "$out" <<'PY'
import json, sys
import mlflow
runs = mlflow.search_runs(experiment_names=["evals-bench"], output_format="list")
rows = []
for r in sorted(runs, key=lambda r: r.info.start_time):
    m = r.data.metrics
    tasks = [k for k in m if k.startswith("time.") and k != "time.model_load_s"]
    rows.append({"recipe": r.data.tags.get("qexp.recipe"), "status": r.info.status,
                 "device": r.data.tags.get("qexp.device_name"), "error": r.data.tags.get("qexp.error"),
                 "versions": {k.split(".")[-1]: v for k, v in r.data.tags.items() if k.startswith("qexp.version.")},
                 "seconds_after_model_load": sum(m[k] for k in tasks) - m.get("time.model_load_s", 0.0),
                 "metrics": dict(sorted(m.items()))})
json.dump(rows, open(f"{sys.argv[1]}/evals_runs.json", "w"), indent=1)
print(json.dumps(rows, indent=1))
PY
