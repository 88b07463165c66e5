# Image for data prep, evaluation and registration (CPU only, no CUDA libraries).
# Build from the repository root:  docker build -f containers/base.Dockerfile -t REPO/tlp:TAG .
# Python matches the version the lock was resolved on (3.11).
FROM python:3.11.7-slim-bookworm

LABEL org.opencontainers.image.title="tlp" \
      org.opencontainers.image.description="Transfer-learning pipeline: data prep, evaluation, registration" \
      org.opencontainers.image.source="https://github.com/tlp/tlp" \
      org.opencontainers.image.licenses="Apache-2.0"

ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    TF_CPP_MIN_LOG_LEVEL=2

RUN groupadd --gid 1000 tlp && useradd --uid 1000 --gid tlp --create-home tlp \
    && mkdir -p /app && chown tlp:tlp /app

WORKDIR /app
COPY constraints.txt pyproject.toml README.md ./
COPY components ./components
COPY pipelines ./pipelines
# The same lock as the local .venv: the image runs exactly what was tested.
RUN python -m pip install --no-cache-dir -c constraints.txt .

USER 1000:1000
