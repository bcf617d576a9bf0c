#!/usr/bin/env bash
# Prepare what the device tool carries (both folders are git-ignored; run from the repo root, here, once per
# checkout):
#   .whl/  wheels for the GPU image (Python 3.12, x86-64) of what it lacks: torchao, mlflow-skinny, lm-eval and
#          their dependencies (the image already has torch, transformers, triton, pandas, ...; see the device
#          tool's KINDS.md). Three of them are sdist-only on PyPI and are built into wheels here.
#   .data/ the Qwen3 tokenizer, MMLU CSVs and WikiText-2 raw from ../shared/data.
# Then every device command starts with `source scripts/device_env.sh` and passes carry=[".whl", ".data"].
set -euo pipefail
cd "$(dirname "$0")/.."
data=${QEXP_SHARED_DATA:-../shared/data}
mkdir -p .whl .data
cp -r "$data/qwen3-tokenizer" "$data/mmlu" "$data/wikitext-2-raw" .data/ && chmod -R u+w .data
pins=(
  lm-eval==0.4.13
  torchao==0.18.0
  mlflow-skinny==3.17.2
  mlflow-tracing==3.17.2
  datasets==5.2.0
  alembic==1.20.1
  cryptography==50.0.2
  dill==0.4.1
  evaluate==0.4.6
  multiprocess==0.70.19
  rouge-score==0.1.2
  sqlalchemy==2.1.9
  more-itertools==11.2.1
  pytablewriter==1.2.1
  sqlitedict==2.1.0
  word2number==1.1
  cachetools==7.3.3
  cffi==2.1.1
  databricks-sdk==0.162.0
  dataproperty==1.1.1
  fastapi==0.165.0
  gitpython==3.2.1
  httpx2==2.16.2
  httpcore2==2.16.2
  importlib-metadata==9.1.0
  mbstrdecoder==1.1.5
  opentelemetry-api==1.45.2
  opentelemetry-proto==1.45.2
  opentelemetry-sdk==1.45.2
  opentelemetry-semantic-conventions==0.66b2
  pathvalidate==3.3.1
  prettytable==3.18.0
  pydantic==2.14.4
  pydantic-core==2.50.5
  python-dotenv==1.2.4
  sqlparse==0.6.1
  starlette==1.10.0
  tabledata==1.3.5
  tcolorpy==0.1.7
  uvicorn==0.54.0
  mako==1.4.3
  nltk==3.10.4
  annotated-types==0.8.0
  chardet==6.0.0.post1
  gitdb==4.0.12
  google-auth==2.63.0
  pytz==2026.6
  truststore==0.10.5
  typepy==1.3.5
  typing-inspection==0.4.5
  wcwidth==0.9.4
  defusedxml==0.7.1
  pycparser==3.12
  pyasn1-modules==0.4.2
  smmap==5.0.3
  pyasn1==0.6.5
  pytest-xdist==3.8.0  # the GPU suite's ~1700 tests compile kernels: spread them over the host's cores (-n)
  execnet==2.1.2
)
pip wheel -q --no-deps -w .whl sqlitedict==2.1.0 rouge-score==0.1.2 word2number==1.1
platforms=()
for p in manylinux_2_28 manylinux_2_27 manylinux_2_24 manylinux_2_17 manylinux2014 manylinux1 manylinux_2_31 manylinux_2_34; do
  platforms+=(--platform "${p}_x86_64")
done
for pin in "${pins[@]}"; do
  case $pin in sqlitedict==*|rouge-score==*|word2number==*) continue ;; esac
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    "${platforms[@]}" -d .whl "$pin"
done
du -sh .whl .data
