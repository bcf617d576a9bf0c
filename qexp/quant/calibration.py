"""SmoothQuant calibration data: token batches from splits that are never evaluated.

wikitext: the WikiText-2 *validation* text (ppl evaluates test), tokenized once and cut into non-overlapping
windows of `seq_len` tokens, `calib_samples` of them picked with the run's seed, batched `batch_size` at a time.
mmlu: `calib_samples` MMLU *dev* questions (the few-shot pool; mmlu evaluates test), one prompt per batch so no
padding token ever reaches the activation statistics.
Local files come from cfg.data_dir or $QEXP_DATA_DIR (wikitext-2-raw/wiki.valid.raw, mmlu/dev/*.csv);
with neither, the splits are fetched from the hub with `datasets`.
"""
from __future__ import annotations

import csv
import os
from pathlib import Path

import torch

from qexp.config import ConfigError, RunConfig

SEQ_LEN = 512
BATCH_SIZE = 8


def data_dir(cfg: RunConfig) -> Path | None:
    d = cfg.data_dir or os.environ.get("QEXP_DATA_DIR")
    return Path(d) if d else None


def wikitext_valid_text(root: Path | None) -> str:
    if root is not None:
        p = root / "wikitext-2-raw" / "wiki.valid.raw"
        if not p.is_file():
            raise ConfigError(f"calibration text not found: {p} (data dir {root})")
        return p.read_text(encoding="utf-8")
    from datasets import load_dataset

    return "".join(load_dataset("wikitext", "wikitext-2-raw-v1", split="validation")["text"])


def mmlu_dev_prompts(root: Path | None) -> list[str]:
    """Every dev question as 'question / A. .. D. / Answer: X', subjects in sorted order."""
    if root is not None:
        files = sorted((root / "mmlu" / "dev").glob("*_dev.csv"))
        if not files:
            raise ConfigError(f"calibration prompts not found: {root / 'mmlu' / 'dev'}/*_dev.csv")
        rows = [row for f in files for row in csv.reader(f.open(encoding="utf-8"))]
    else:
        from datasets import load_dataset

        ds = load_dataset("cais/mmlu", "all", split="dev")
        rows = [[r["question"], *r["choices"], "ABCD"[r["answer"]]] for r in ds]
    return [f"{q}\nA. {a}\nB. {b}\nC. {c}\nD. {d}\nAnswer: {ans}" for q, a, b, c, d, ans in rows]


def _pick(n_have: int, n_want: int, seed: int, what: str) -> list[int]:
    if n_want > n_have:
        raise ConfigError(f"calib_samples {n_want} exceeds the {n_have} {what} available")
    gen = torch.Generator().manual_seed(seed)
    return sorted(torch.randperm(n_have, generator=gen)[:n_want].tolist())


def calibration_batches(cfg: RunConfig, tokenizer, device: str | torch.device = "cpu", seq_len: int = SEQ_LEN,
                        batch_size: int = BATCH_SIZE) -> list[torch.Tensor]:
    """`cfg.calib_samples` token sequences from `cfg.calib_data`, as (batch, tokens) int64 tensors on `device`."""
    root = data_dir(cfg)
    if cfg.calib_data == "mmlu":
        prompts = mmlu_dev_prompts(root)
        idx = _pick(len(prompts), cfg.calib_samples, cfg.seed, "MMLU dev questions")
        return [torch.tensor([tokenizer(prompts[i])["input_ids"]], device=device) for i in idx]
    ids = torch.tensor(tokenizer(wikitext_valid_text(root), verbose=False)["input_ids"])
    windows = ids[: len(ids) // seq_len * seq_len].reshape(-1, seq_len)
    chosen = windows[_pick(len(windows), cfg.calib_samples, cfg.seed, f"{seq_len}-token WikiText-2 validation windows")]
    return [b.to(device) for b in chosen.split(batch_size)]
