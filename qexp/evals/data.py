"""Where evaluation data comes from: the hub by default, or a local dir (cfg.data_dir / $QEXP_DATA_DIR).

The local dir holds the original files: mmlu/{dev,val,test}/<subject>_<split>.csv (headerless
question,A,B,C,D,answer) and wikitext-2-raw/ (wiki.test.raw, wikitext_document_level/). For lm-eval the MMLU CSVs
are converted once into a local dataset dir with cais/mmlu's schema and configs, so lm-eval's stock task YAMLs
read it unchanged through `dataset_path`.
"""
from __future__ import annotations

import csv
import hashlib
import os
import shutil
from contextlib import contextmanager
from pathlib import Path

MMLU_HUB = "cais/mmlu"
LETTERS = "ABCD"
# local CSV split dir -> cais/mmlu split name
MMLU_SPLITS = {"dev": "dev", "val": "validation", "test": "test"}


class DataError(FileNotFoundError):
    """Evaluation data is missing or malformed; the message is one line for the user."""


def cache_dir(*parts: str) -> Path:
    """qexp's on-disk cache ($QEXP_CACHE_DIR, default ~/.cache/qexp)."""
    root = Path(os.environ.get("QEXP_CACHE_DIR") or Path.home() / ".cache" / "qexp")
    return root.joinpath(*parts)


@contextmanager
def atomic_file(path: Path):
    """Yield a private temporary path beside `path`; once the block has written it, it replaces `path` in one
    step, so concurrent runs (sweep points sharing the cache) read the whole file or none; on error it is removed."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}{path.suffix}")
    try:
        yield tmp
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)


def local_data_dir(cfg) -> Path | None:
    d = getattr(cfg, "data_dir", None) or os.environ.get("QEXP_DATA_DIR")
    if not d:
        return None
    p = Path(d)
    if not p.is_dir():
        raise DataError(f"data dir {p} does not exist")
    return p


# -- MMLU -----------------------------------------------------------------------------------------------------

def read_mmlu_csv(path: Path) -> list[dict]:
    """Rows of one original MMLU CSV in cais/mmlu's schema (answer as 0-3)."""
    subject = path.stem.rsplit("_", 1)[0]
    rows = []
    with path.open(newline="", encoding="utf-8") as f:
        for i, rec in enumerate(csv.reader(f)):
            if len(rec) != 6 or rec[5].strip() not in LETTERS:
                raise DataError(f"{path}:{i + 1}: expected question,A,B,C,D,answer with answer in A-D")
            rows.append({"question": rec[0], "subject": subject, "choices": rec[1:5],
                         "answer": LETTERS.index(rec[5].strip())})
    return rows


def mmlu_subjects(csv_dir: Path) -> list[str]:
    return sorted(p.stem.rsplit("_", 1)[0] for p in (csv_dir / "test").glob("*_test.csv"))


def _tree_hash(files: list[Path]) -> str:
    h = hashlib.sha256()
    for p in files:
        h.update(p.name.encode())
        h.update(p.read_bytes())
    return h.hexdigest()[:16]


def local_mmlu_dataset(csv_dir: Path) -> Path:
    """A dataset dir mirroring cais/mmlu (one config per subject plus "all"), built once from the CSVs.

    load_dataset(dir, subject) then gives the same rows, columns and splits as the hub dataset.
    """
    import pandas as pd

    csv_dir = Path(csv_dir)
    files = sorted(csv_dir.glob("*/*.csv"))
    subjects = mmlu_subjects(csv_dir)
    if not subjects:
        raise DataError(f"no MMLU test CSVs under {csv_dir}/test (expected <subject>_test.csv)")
    out = cache_dir("mmlu", _tree_hash(files))
    if (out / "README.md").is_file():
        return out
    tmp = out.with_name(out.name + f".tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    configs = []
    all_rows: dict[str, list] = {s: [] for s in MMLU_SPLITS.values()}
    for subject in subjects:
        data_files = []
        for local, split in MMLU_SPLITS.items():
            src = csv_dir / local / f"{subject}_{local}.csv"
            if not src.is_file():
                raise DataError(f"missing {src}")
            rows = read_mmlu_csv(src)
            all_rows[split] += rows
            dst = tmp / subject / f"{split}.parquet"
            dst.parent.mkdir(parents=True, exist_ok=True)
            pd.DataFrame(rows).to_parquet(dst, index=False)
            data_files.append((split, f"{subject}/{split}.parquet"))
        configs.append((subject, data_files))
    all_files = []
    for split, rows in all_rows.items():
        (tmp / "all").mkdir(parents=True, exist_ok=True)
        pd.DataFrame(rows).to_parquet(tmp / "all" / f"{split}.parquet", index=False)
        all_files.append((split, f"all/{split}.parquet"))
    configs.insert(0, ("all", all_files))
    lines = ["---", "configs:"]
    for name, data_files in configs:
        lines += [f"- config_name: {name}", "  data_files:"]
        lines += [f"  - split: {split}\n    path: {path}" for split, path in data_files]
    lines += ["---", f"MMLU converted by qexp from the original CSVs in {csv_dir} (cais/mmlu schema).", ""]
    (tmp / "README.md").write_text("\n".join(lines))
    try:
        tmp.rename(out)
    except OSError:  # another process built it first
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def mmlu_dataset_path(cfg) -> str:
    """What lm-eval's mmlu tasks should load: the hub id, or the local converted dir."""
    local = local_data_dir(cfg)
    if local is None:
        return MMLU_HUB
    if not (local / "mmlu" / "test").is_dir():
        raise DataError(f"data dir {local} has no mmlu/test/ (original MMLU CSV layout expected)")
    return str(local_mmlu_dataset(local / "mmlu"))


def load_mmlu(cfg, config: str, split: str):
    """One cais/mmlu config/split as a datasets.Dataset, from the hub or the local dir."""
    import datasets

    return datasets.load_dataset(mmlu_dataset_path(cfg), config, split=split)


# -- WikiText-2 -----------------------------------------------------------------------------------------------

def raw_to_rows(text: str) -> list[str]:
    """wiki.*.raw -> the rows of HF `wikitext-2-raw-v1` (blank lines are "", others keep their newline)."""
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    return ["" if not line.strip() else line + "\n" for line in lines]


def wikitext_rows(cfg, split: str = "test") -> list[str]:
    """The rows of WikiText-2 raw (HF `Salesforce/wikitext`, `wikitext-2-raw-v1`)."""
    local = local_data_dir(cfg)
    if local is None:
        import datasets

        return list(datasets.load_dataset("Salesforce/wikitext", "wikitext-2-raw-v1", split=split)["text"])
    name = {"test": "wiki.test.raw", "validation": "wiki.valid.raw"}[split]
    path = local / "wikitext-2-raw" / name
    if not path.is_file():
        raise DataError(f"missing {path} (WikiText-2 raw expected under <data_dir>/wikitext-2-raw/)")
    return raw_to_rows(path.read_text(encoding="utf-8"))


def wikitext_documents_dir(cfg) -> Path | None:
    """The local save_to_disk copy of lm-eval's `wikitext` dataset (EleutherAI/wikitext_document_level), or None."""
    local = local_data_dir(cfg)
    if local is None:
        return None
    path = local / "wikitext-2-raw" / "wikitext_document_level"
    if not (path / "test" / "state.json").is_file():
        raise DataError(f"missing {path}/test (save_to_disk copy of wikitext_document_level expected)")
    return path


def load_saved_splits(path: str | Path, **_):
    """A DatasetDict of the splits saved under `path` (its dataset_dict.json may list splits not copied)."""
    import datasets

    path = Path(path)
    return datasets.DatasetDict({p.name: datasets.Dataset.load_from_disk(str(p))
                                 for p in sorted(path.iterdir()) if (p / "state.json").is_file()})
