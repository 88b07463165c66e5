# Serving image: `tlp serve` (KServe's Python model server) for one exported model. Vertex AI runs
# it as a custom container (AIP_HTTP_PORT, AIP_PREDICT_ROUTE, AIP_HEALTH_ROUTE, AIP_STORAGE_URI);
# self-hosted: docker run -p 8080:8080 -v $PWD/model:/model REPO/tlp-serve:TAG /model --host 0.0.0.0
# Build from the repository root:  docker build -f containers/serve.Dockerfile -t REPO/tlp-serve:TAG .
# CPU serving (tensorflow from the lock runs on CPUs); Python matches the lock's (3.11).
FROM python:3.11.7-slim-bookworm

LABEL org.opencontainers.image.title="tlp-serve" \
      org.opencontainers.image.description="Transfer-learning pipeline: HTTP inference server for an exported model" \
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
# The same lock as the local .venv: the image serves with exactly what was tested.
RUN python -m pip install --no-cache-dir -c constraints.txt .

USER 1000:1000
EXPOSE 8080
ENTRYPOINT ["tlp", "serve"]
