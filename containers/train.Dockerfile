# Training image: feature extraction and fine-tuning (GPU-capable).
# Build from the repository root:  docker build -f containers/train.Dockerfile -t REPO/tlp-train:TAG .
# The base tag matches the tensorflow pin in constraints.txt (tests/unit/test_containers.py checks it).
FROM tensorflow/tensorflow:2.21.0-gpu

ARG BAKE_WEIGHTS=1
LABEL org.opencontainers.image.title="tlp-train" \
      org.opencontainers.image.description="Transfer-learning pipeline: training steps (feature extraction, fine-tuning)" \
      org.opencontainers.image.source="https://github.com/tlp/tlp" \
      org.opencontainers.image.licenses="Apache-2.0"

ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    KERAS_HOME=/opt/keras \
    TF_CPP_MIN_LOG_LEVEL=2

RUN groupadd --gid 1000 tlp && useradd --uid 1000 --gid tlp --create-home tlp \
    && mkdir -p /opt/keras /app && chown tlp:tlp /opt/keras /app

WORKDIR /app
COPY constraints.txt pyproject.toml README.md ./
COPY components ./components
COPY pipelines ./pipelines
# The same lock as the local .venv: the image runs exactly what was tested.
RUN python -m pip install --no-cache-dir -c constraints.txt .

USER 1000:1000
# Bake the default base's ImageNet weights in, so runs do not download them (BAKE_WEIGHTS=0 skips).
RUN if [ "$BAKE_WEIGHTS" = "1" ]; then \
      python -c "import tf_keras; tf_keras.applications.MobileNetV2(input_shape=(160, 160, 3), include_top=False, weights='imagenet')"; \
    fi
