# Source at the start of every device-tool command (run from the repo root there; scripts/device_prepare.sh
# builds the carried folders here first):
#   source scripts/device_env.sh
# Installs the carried wheels (.whl: torchao, mlflow-skinny, lm-eval and what the GPU image lacks) and points
# qexp at the carried data (.data: tokenizer, MMLU, WikiText-2). Carry both: carry=[".whl", ".data"].
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
  || { echo "wheel install failed"; exit 1; }
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1
export QEXP_SHARED_DATA=$PWD/.data QEXP_TOKENIZER=$PWD/.data/qwen3-tokenizer QEXP_DATA_DIR=$PWD/.data
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1
