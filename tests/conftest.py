import os
from pathlib import Path

import pytest
import torch

# Tests never need the Hugging Face hub; offline mode makes hub look-ups fail at once instead of retrying.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

REPO = Path(__file__).resolve().parent.parent
TINY_MODEL = REPO / "configs" / "models" / "tiny-qwen3"


def _shared_data_dir() -> Path:
    return Path(os.environ.get("QEXP_SHARED_DATA", REPO.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The real data (MMLU CSVs, WikiText-2 raw, Qwen3 tokenizer); a loud failure if absent, never a skip."""
    d = _shared_data_dir()
    if not (d / "qwen3-tokenizer" / "vocab.json").is_file():
        pytest.fail(f"shared data not found at {d} (set QEXP_SHARED_DATA); tests that need it cannot run")
    return d


@pytest.fixture(scope="session")
def tokenizer_dir(shared_data) -> Path:
    return shared_data / "qwen3-tokenizer"


@pytest.fixture(scope="session")
def tiny_model_dir() -> Path:
    return TINY_MODEL


@pytest.fixture(scope="session")
def tokenizer(tokenizer_dir):
    from qexp.models.loader import load_tokenizer

    return load_tokenizer("unused", str(tokenizer_dir))


@pytest.fixture
def mlflow_store(tmp_path, monkeypatch):
    """A private MLflow tracking store (sqlite + artifacts under tmp_path) and qexp cache for one test."""
    import mlflow

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("QEXP_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path)  # artifacts land under tmp_path/mlruns
    mlflow.set_tracking_uri(uri)
    yield uri
    while mlflow.active_run():
        mlflow.end_run()


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU (run through the device tool)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _no_mlflow_experiment_leak():
    """mlflow.set_experiment exports MLFLOW_EXPERIMENT_ID into os.environ; keep one test's experiment (and a
    subprocess's `mlflow run`) from inheriting another's."""
    yield
    os.environ.pop("MLFLOW_EXPERIMENT_ID", None)
