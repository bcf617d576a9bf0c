"""Tune the kernel cells of the engine's own linears in place: by decode step time, not in isolation.

    python3 scripts/tune_bs1.py --recipes int8-row,fp8-row --out bs1_tune.json [--write] [--batch 100]

Why: `bench_linear.py --tune` times each linear alone (n weight copies back to back). In the engine the GEMVs run
between norms, rope and attention with programmatic dependent launch, so a config's prologue overlaps a different
kernel and two configs within 2 % of each other alone can differ by 5 % in the step (BENCHMARKS.md, 2026-12-01).
Here each cell the decode graph uses (recorded while it is captured) tries the candidates and the current choice;
one coordinate-descent pass, each candidate timed by graph replay (as bs1_breakdown.replay_us) with the other cells
at their best so far. Batch 1 (default) tries the gemv_gl candidates of the M=1 cells; --batch B the gluon_rs (or
--backend) candidates of the cells of B's M bucket (e.g. 100 sequences, the seed decode test: M=104, the M=128
cells). Each chosen config is then checked on its cell's shape at that M against the reference (random weights
quantized as the cell's kind, bench_linear's tolerance). The whole step's logits are not compared: on random
weights a last-bit change in one GEMV's sum order moves them by ~1e-2 after 28 layers.
--write stores the chosen cells in this GPU's table (qexp/kernels/tuned/<gpu>.json).
"""
from __future__ import annotations

import argparse
import json

import torch
from bench_engine import quantize_recipe  # scripts/, beside this file
from bench_linear import TOL, quantize, rel_err
from bs1_breakdown import recaptured_replay_us

from qexp.engine import LLM, model_runner
from qexp.kernels import configs, fused, reference, search_space
from qexp.models.loader import load_model


def engine_cells(llm: LLM, batch: int = 1) -> list[str]:
    """Table keys of the quantized linears the decode graph of `batch` sequences runs (recorded during a capture)."""
    with configs.recording() as keys:
        recaptured_replay_us(llm, batch)
    m_b = configs.m_bucket(model_runner.graph_bucket(llm.runner.max_num_seqs, batch))
    return [c for c in keys if c.endswith(f"|{m_b}")]


def check_cell(cell: str, cfg: dict, m: int = 1) -> float:
    """Relative error of cfg on the cell's shape (m tokens) against the reference."""
    kind_, n, k, _ = cell.split("|")
    _, dtype, gran = kind_.split("-")
    gs = int(gran.removeprefix("group")) if gran.startswith("group") else None
    gen = torch.Generator(device="cuda").manual_seed(0)
    w = torch.randn(int(n), int(k), device="cuda", generator=gen, dtype=torch.bfloat16) / int(k) ** 0.5
    q, s = quantize(w, {"dtype": dtype, "gran": "group" if gs else "row", "gs": gs})
    x = torch.randn(m, int(k), device="cuda", generator=gen, dtype=torch.bfloat16)
    return rel_err(fused.quantized_linear(x, q, s, group_size=gs, config=cfg),
                   reference.quantized_linear(x, q, s, group_size=gs))


def tune(llm: LLM, log, batch: int = 1, backend: str | None = None) -> dict:
    backend = backend or ("gemv_gl" if batch == 1 else "gluon_rs")
    cells = [c for c in engine_cells(llm, batch) if c.startswith("w8a16")]  # the candidates are weight-only kernels
    name, cap = configs.device_name(0), configs.device_capability(0)
    chosen = {}
    for c in cells:
        kind_, n, k, m_b = c.split("|")
        chosen[c] = configs.lookup(kind_, int(n), int(k), int(m_b), name, cap)
    with configs.override(chosen):  # read at each call: the loop below changes one cell at a time
        return _descend(llm, cells, chosen, log, batch, backend)


def _descend(llm: LLM, cells: list[str], chosen: dict, log, batch: int, backend: str) -> dict:
    """One coordinate-descent pass over the cells (chosen is updated in place), then the reference check."""
    m = model_runner.graph_bucket(llm.runner.max_num_seqs, batch)
    start_us = recaptured_replay_us(llm, batch)
    log(f"cells {cells}; start {start_us:.1f} us")
    trials = []
    for cell in cells:
        best_cfg, best_us = chosen[cell], recaptured_replay_us(llm, batch)
        for cfg in (c for c in search_space.candidates(cell.split("|")[0], m) if c["backend"] == backend):
            if cfg == best_cfg:
                continue
            chosen[cell] = cfg
            us = recaptured_replay_us(llm, batch)
            trials.append({"cell": cell, "config": cfg, "replay_us": us})
            if isinstance(us, float) and us < best_us:
                best_cfg, best_us = cfg, us
        chosen[cell] = best_cfg
        log(f"{cell}: {best_us:.1f} us with {best_cfg}")
    end_us = recaptured_replay_us(llm, batch)
    errors = {cell: check_cell(cell, cfg, m) for cell, cfg in chosen.items()}
    if bad := {c: e for c, e in errors.items() if not e <= TOL}:
        raise SystemExit(f"chosen configs do not match the reference: {bad}")
    return {"cells": chosen, "start_replay_us": start_us, "end_replay_us": end_us, "rel_err": errors,
            "trials": trials}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="configs/models/qwen3-1.7b")
    ap.add_argument("--recipes", default="int8-row")
    ap.add_argument("--out", default="benchmarks/bs1_tune.json")
    ap.add_argument("--write", action="store_true", help="store the chosen cells in this GPU's tuned table")
    ap.add_argument("--batch", type=int, default=1, help="sequences in the decode step tuned (1: the M=1 cells)")
    ap.add_argument("--backend", default=None, help="candidates' backend (gemv_gl at batch 1, else gluon_rs)")
    args = ap.parse_args()
    name = torch.cuda.get_device_name()
    result = {"device": name, "torch": torch.__version__, "tables": configs.tables_in_use(0), "config": vars(args)}
    for recipe in args.recipes.split(","):
        model = load_model(args.model, "dummy", "cuda", 0)
        quantize_recipe(model, recipe)
        llm = LLM(model, max_num_seqs=256, max_model_len=2048, max_num_batched_tokens=16384)
        result[recipe] = tune(llm, lambda s, r=recipe: print(r, s, flush=True), args.batch, args.backend)
        del llm, model
        torch.cuda.empty_cache()
        with open(args.out, "w") as f:
            json.dump(result, f, indent=1)
    if args.write:
        path = configs.tuned_path(name)
        table = json.loads(path.read_text())
        for recipe in args.recipes.split(","):
            table["configs"].update(result[recipe]["cells"])
        path.write_text(json.dumps(table, indent=1, sort_keys=True))
        print("wrote", path)


if __name__ == "__main__":
    main()
