# syntax=docker/dockerfile:1
# The reviewlens API on CPU, with the default bundle and its offline base baked in.
#
#   python scripts/train_default.py            # once: the build copies models/default
#   docker build -t reviewlens .
#   docker run --rm -p 8000:8000 reviewlens   # then: curl localhost:8000/healthz
#
# The build steps live in docker/build-image.sh (tests/test_docker_steps.py runs them on the host).
FROM python:3.11-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VIRTUAL_ENV=/opt/reviewlens/venv \
    REVIEWLENS_CACHE=/opt/reviewlens/cache \
    HF_HUB_OFFLINE=1 \
    TRANSFORMERS_OFFLINE=1 \
    TOKENIZERS_PARALLELISM=false
ENV PATH=/opt/reviewlens/venv/bin:$PATH

RUN python -m venv "$VIRTUAL_ENV" \
 && useradd --system --uid 10001 --create-home --home-dir /home/reviewlens --shell /usr/sbin/nologin reviewlens

WORKDIR /opt/reviewlens/app
# .dockerignore lets through only pyproject.toml, README.md, LICENSE, src/, docker/, examples/ and models/default/
COPY . .

ARG TORCH_SPEC=torch==2.13.0
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
RUN PYTHON="$VIRTUAL_ENV/bin/python" MODEL=/opt/reviewlens/app/models/default \
    TORCH_SPEC="$TORCH_SPEC" TORCH_INDEX_URL="$TORCH_INDEX_URL" bash docker/build-image.sh

USER reviewlens
EXPOSE 8000 8501
HEALTHCHECK --interval=30s --timeout=5s --start-period=120s --retries=3 \
  CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=4)"]
CMD ["reviewlens", "serve", "--host", "0.0.0.0", "--port", "8000", "--model", "/opt/reviewlens/app/models/default"]
