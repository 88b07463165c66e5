# Training image: feature extraction and fine-tuning (GPU-capable).
# Build from the repository root (`make images` passes the build args):
#   docker build -f containers/train.Dockerfile -t REPO/tlp-train:TAG .
# The default base's tag matches the tensorflow pin in constraints.txt (tests/unit/test_containers.py
# checks it). Without Docker Hub, BASE_IMAGE can be the stand-in built from Debian's packages
# (containers/standin-base.sh): the same steps, on CPU only.
ARG BASE_IMAGE=tensorflow/tensorflow:2.21.0-gpu
FROM ${BASE_IMAGE}

# From here to the dependency layer, the same instructions as base.Dockerfile: on the same base
# (the stand-in), Docker builds the shared layers once for both images.
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
# HOME is a fixed, world-writable directory: `tlp run --runner docker` starts the containers as
# the invoking host user (any uid, usually without an entry in /etc/passwd), and caches
# (Keras, matplotlib, TFDS) must still have somewhere to go.
ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    TF_CPP_MIN_LOG_LEVEL=2 \
    HOME=/home/tlp

RUN groupadd --gid 1000 tlp && useradd --uid 1000 --gid tlp --home-dir /home/tlp --create-home tlp \
    && chmod 1777 /home/tlp

# The dependency layer: every locked run-time dependency except TensorFlow. The same instruction
# and inputs in every Dockerfile, so images on the same base build it once (see lock_install.py).
COPY constraints.txt pyproject.toml containers/lock_install.py /opt/tlp-lock/
RUN python /opt/tlp-lock/lock_install.py deps

# TensorFlow itself, the locked version (already there on the default base: pip keeps it).
# A layer of its own on purpose: the one above is shared with the CPU image.
# hadolint ignore=DL3059
RUN python /opt/tlp-lock/lock_install.py tensorflow gpu

WORKDIR /app
COPY pyproject.toml README.md ./
COPY components ./components
COPY pipelines ./pipelines
# The project itself; its dependencies are all in the layers above, at the lock's versions.
RUN python -m pip install --no-cache-dir --no-deps . \
    && python /opt/tlp-lock/lock_install.py check

USER 1000:1000
# Bake the default base's ImageNet weights in, so runs do not download them: tf_keras keeps
# them under ~/.keras/models, made writable for every uid (Keras only uses a cache directory it
# can write to). BAKE_WEIGHTS=0 skips it, e.g. where the weights' host is out of reach.
ARG BAKE_WEIGHTS=1
RUN if [ "$BAKE_WEIGHTS" = "1" ]; then \
      python -c "import tf_keras; tf_keras.applications.MobileNetV2(input_shape=(160, 160, 3), include_top=False, weights='imagenet')" \
      && chmod -R a+rwX /home/tlp/.keras; \
    fi

ARG BASE_IMAGE
# tlp.baked-weights tells `tlp run --runner docker` whether the steps can work without network.
LABEL org.opencontainers.image.title="tlp-train" \
      org.opencontainers.image.description="Transfer-learning pipeline: training steps (feature extraction, fine-tuning)" \
      org.opencontainers.image.source="https://github.com/tlp/tlp" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.base.name="${BASE_IMAGE}" \
      tlp.baked-weights="${BAKE_WEIGHTS}"
