"""The engine benchmarks' recipe names (scripts/bench_engine.py, also used by tune_bs1 and bs1_breakdown) quantize
the model the way they say: dtype, granularity and group size, and lm_head only with +head."""
import json
import sys
from pathlib import Path

import pytest
import torch

from qexp.config import ConfigError
from qexp.models.loader import load_model
from qexp.quant import qdq
from qexp.quant.real import QuantizedWeight

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "scripts"))
from bench_engine import quantize_recipe  # noqa: E402  (a script, not a package module)


@pytest.fixture
def qwen3(tmp_path, tiny_model_dir):
    cfg = json.loads((tiny_model_dir / "config.json").read_text())
    cfg.update(hidden_size=512, intermediate_size=1024, head_dim=128, num_attention_heads=4, num_key_value_heads=2,
               num_hidden_layers=1, vocab_size=512)
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    return load_model(str(tmp_path), "dummy", "cpu", seed=0)


@pytest.mark.parametrize("recipe,dtype,scales,head", [
    ("int8-row", "int8", 512, False),
    ("fp8-tensor", "fp8", 1, False),
    ("int8-group64", "int8", 512 * 1024 // 64, False),
    ("fp8-group256", "fp8", 512 * 1024 // 256, False),
    ("fp8-row+head", "fp8", 512, True),
])
def test_recipe_name_sets_dtype_granularity_and_group_size(qwen3, recipe, dtype, scales, head):
    quantize_recipe(qwen3, recipe)
    down = qwen3.model.layers[0].mlp.down_proj  # 1024 -> 512
    assert isinstance(down.weight, QuantizedWeight) and down.weight.qdata.dtype == qdq.STORAGE[dtype]
    assert down.weight.scale.numel() == scales
    assert isinstance(qwen3.lm_head.weight, QuantizedWeight) == head


def test_unknown_group_size_is_refused(qwen3):
    with pytest.raises(ConfigError, match="group"):
        quantize_recipe(qwen3, "int8-group100")
    assert type(qwen3.model.layers[0].mlp.down_proj.weight) is torch.nn.Parameter
