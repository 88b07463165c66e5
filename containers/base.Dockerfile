# CPU image: data prep, evaluation and registration (no CUDA, no GPU build of TensorFlow).
# Build from the repository root (`make images` passes the build args):
#   docker build -f containers/base.Dockerfile -t REPO/tlp:TAG .
# BASE_IMAGE: the pinned default, or a stand-in built from Debian's packages when Docker Hub is
# out of reach (containers/standin-base.sh, `make images-offline`). Python 3.11, as in the lock.
ARG BASE_IMAGE=python:3.11.7-slim-bookworm
FROM ${BASE_IMAGE}

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

# tensorflow-cpu instead of tensorflow: the same release and modules without the CUDA kernels
# (1.3 GB installed instead of 1.9 GB). The project declares `tensorflow`; lock_install.py check
# accepts that one missing name only because tensorflow-cpu of the locked version is present.
# In the same layer, so nothing removed here is stored: the C++ headers (for building custom ops,
# 240 MB) and the static symbol tables of its shared libraries (strip --strip-unneeded keeps the
# dynamic symbols that loading needs; 230 MB). binutils is Debian bookworm's, the base's release.
RUN python /opt/tlp-lock/lock_install.py tensorflow cpu \
    && tf="$(python -c 'import importlib.util as u; print(u.find_spec("tensorflow").submodule_search_locations[0])')" \
    && rm -rf "${tf}/include" \
    && apt-get update \
    && apt-get install -y --no-install-recommends binutils=2.40-2 \
    && find "${tf}" -type f -name '*.so*' -exec strip --strip-unneeded {} + \
    && apt-get purge -y --auto-remove binutils \
    && apt-get clean \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /app
COPY pyproject.toml README.md ./
COPY components ./components
COPY pipelines ./pipelines
# The project itself; its dependencies are all in the layers above, at the lock's versions.
RUN python -m pip install --no-cache-dir --no-deps . \
    && python /opt/tlp-lock/lock_install.py check

ARG BASE_IMAGE
LABEL org.opencontainers.image.title="tlp" \
      org.opencontainers.image.description="Transfer-learning pipeline: data prep, evaluation, registration (CPU)" \
      org.opencontainers.image.source="https://github.com/tlp/tlp" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.base.name="${BASE_IMAGE}"

USER 1000:1000
