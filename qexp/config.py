"""One typed description of a run: defaults < YAML file < CLI overrides, validated before any work."""
from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

DTYPES = ("bf16", "int8", "fp8")
QUANTS = ("none", "tensor", "row", "group", "smooth")
GROUP_SIZES = (64, 128, 256, 512)
MODES = ("fake", "real")
TASKS = ("mmlu", "ppl", "throughput", "fidelity", "matmul")
LOAD_FORMATS = ("auto", "dummy")
DEVICES = ("auto", "cuda", "cpu")
PROTOCOLS = ("standard", "seed")
CALIB_DATA = ("wikitext", "mmlu")  # SmoothQuant calibration: WikiText-2 validation text or MMLU dev prompts


class ConfigError(ValueError):
    """Invalid run configuration; its message is one line meant for the user."""


@dataclass
class RunConfig:
    # model
    model: str = "Qwen/Qwen3-1.7B"  # hub id, local dir, or (with load_format=dummy) a config.json / dir
    load_format: str = "auto"  # auto: pretrained weights; dummy: seeded random weights from the config
    tokenizer: str | None = None  # default: the model's own; a local dir works offline
    # quantization recipe
    dtype: str = "bf16"
    quant: str = "none"
    group_size: int | None = None
    mode: str = "real"
    smoothquant_alpha: float = 0.5
    calib_samples: int = 64
    calib_data: str = "wikitext"
    include_lm_head: bool = False
    # what to measure
    tasks: list[str] = field(default_factory=lambda: ["matmul"])
    matmul_shape: tuple[int, int, int] = (2048, 2048, 2048)  # M, N, K
    num_tests: int = 100  # matmul trials
    num_samples: int = 1000  # MMLU questions (0 = all)
    mmlu_protocol: str = "standard"
    ppl_protocol: str = "standard"
    ppl_context: int = 2048
    ppl_stride: int = 512
    ppl_lines: int = 100  # seed protocol: first N non-empty lines
    prompt_length: int = 1000  # throughput
    generate_length: int = 1000
    num_prompts: int = 100
    # environment
    seed: int = 42
    device: str = "auto"
    data_dir: str | None = None  # local data (MMLU CSVs, WikiText-2 raw); default: hub via datasets/lm-eval
    experiment: str = "qexp"
    run_name: str | None = None

    def __post_init__(self) -> None:
        self.tasks = _as_list(self.tasks)
        self.matmul_shape = tuple(int(x) for x in _as_list(self.matmul_shape))  # type: ignore[assignment]
        if self.group_size in ("", "none", "None", 0, "0"):
            self.group_size = None
        elif self.group_size is not None:
            self.group_size = _as_int("group_size", self.group_size)

    # -- derived -------------------------------------------------------
    @property
    def recipe(self) -> str:
        """Short human name of the quantization recipe, e.g. int8-group128-real."""
        if self.dtype == "bf16":
            return "bf16"
        gran = f"group{self.group_size}" if self.quant == "group" else self.quant
        return f"{self.dtype}-{gran}-{self.mode}"

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["matmul_shape"] = list(self.matmul_shape)
        return d

    def config_hash(self) -> str:
        """Hash of everything that changes results (not names or where they are logged)."""
        d = self.to_dict()
        for k in ("experiment", "run_name"):
            d.pop(k)
        return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]

    # -- validation ----------------------------------------------------
    def validate(self) -> RunConfig:
        _choice("dtype", self.dtype, DTYPES)
        _choice("quant", self.quant, QUANTS)
        _choice("mode", self.mode, MODES)
        _choice("load_format", self.load_format, LOAD_FORMATS)
        _choice("device", self.device, DEVICES)
        _choice("mmlu_protocol", self.mmlu_protocol, PROTOCOLS)
        _choice("ppl_protocol", self.ppl_protocol, PROTOCOLS)
        _choice("calib_data", self.calib_data, CALIB_DATA)
        if not self.tasks:
            raise ConfigError(f"tasks is empty; choose from: {', '.join(TASKS)}")
        for t in self.tasks:
            _choice("task", t, TASKS)
        if self.dtype == "bf16" and self.quant != "none":
            raise ConfigError(f"dtype=bf16 takes quant=none (got quant={self.quant}); use --dtype int8|fp8 to quantize")
        if self.dtype != "bf16" and self.quant == "none":
            raise ConfigError(f"dtype={self.dtype} needs a granularity: --quant {'|'.join(QUANTS[1:])}")
        if self.quant == "group":
            if self.group_size is None:
                raise ConfigError(f"quant=group needs --group-size, one of: {', '.join(map(str, GROUP_SIZES))}")
            if self.group_size not in GROUP_SIZES:
                raise ConfigError(f"invalid group_size {self.group_size!r}; valid values: {', '.join(map(str, GROUP_SIZES))}")
        elif self.group_size is not None:
            raise ConfigError(f"group_size is only valid with quant=group (got quant={self.quant})")
        if len(self.matmul_shape) != 3 or min(self.matmul_shape) < 1:
            raise ConfigError(f"matmul_shape must be three positive ints M N K (got {list(self.matmul_shape)})")
        if not 0.0 <= self.smoothquant_alpha <= 1.0:
            raise ConfigError(f"smoothquant_alpha must be in [0, 1] (got {self.smoothquant_alpha})")
        for name in ("num_tests", "prompt_length", "generate_length", "num_prompts", "ppl_context", "ppl_stride",
                     "ppl_lines", "calib_samples"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1 (got {getattr(self, name)})")
        if self.num_samples < 0:
            raise ConfigError(f"num_samples must be >= 0, 0 meaning all (got {self.num_samples})")
        if self.ppl_stride > self.ppl_context:
            raise ConfigError(f"ppl_stride ({self.ppl_stride}) must not exceed ppl_context ({self.ppl_context})")
        return self


FIELD_NAMES = tuple(f.name for f in fields(RunConfig))


def build_config(yaml_path: str | Path | None = None, overrides: dict[str, Any] | None = None) -> RunConfig:
    """Defaults, then the YAML file, then explicit overrides (None values = not given); validated."""
    values: dict[str, Any] = {}
    if yaml_path is not None:
        values.update(load_yaml(yaml_path))
    values.update({k: v for k, v in (overrides or {}).items() if v is not None})
    unknown = sorted(set(values) - set(FIELD_NAMES))
    if unknown:
        raise ConfigError(f"unknown config key(s): {', '.join(unknown)}; valid keys: {', '.join(FIELD_NAMES)}")
    try:
        cfg = RunConfig(**values)
    except (TypeError, ValueError) as e:
        raise ConfigError(str(e).splitlines()[0]) from None
    return cfg.validate()


def load_yaml(path: str | Path) -> dict[str, Any]:
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file not found: {p}")
    try:
        data = yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"config file {p} is not valid YAML: {str(e).splitlines()[0]}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config file {p} must hold a mapping of keys to values")
    return {k.replace("-", "_"): v for k, v in data.items()}


def _choice(name: str, value: Any, valid: tuple) -> None:
    if value not in valid:
        raise ConfigError(f"invalid {name} {value!r}; valid values: {', '.join(map(str, valid))}")


def _as_list(v: Any) -> list:
    if isinstance(v, str):
        return [x for x in v.replace(",", " ").split() if x]
    return list(v)


def _as_int(name: str, v: Any) -> int:
    try:
        return int(v)
    except (TypeError, ValueError):
        raise ConfigError(f"{name} must be an integer (got {v!r})") from None
