# Serving image: `tlp-serve` (tlp serve alone) answers prediction requests for one model.
# Build from the repository root (`make images` passes the build args):
#   docker build -f containers/serve.Dockerfile -t REPO/tlp-serve:TAG .
# It holds only what serving needs, because every new replica of an autoscaled endpoint pulls and
# starts it: TensorFlow for CPU, KServe's model server, Pillow, the serving code and the few
# libraries that code imports ([tool.tlp] serving-dependencies in pyproject.toml), at the
# versions of the one lock (constraints.txt). No kfp, Beam, MLflow or cloud SDKs beyond
# google-cloud-storage (models at gs://, as Vertex AI's AIP_STORAGE_URI gives them).
# BASE_IMAGE: the CPU image's pinned base, or the stand-in from Debian's packages
# (containers/standin-base.sh, `make images-offline`).
ARG BASE_IMAGE=python:3.11.7-slim-bookworm
FROM ${BASE_IMAGE}

SHELL ["/bin/bash", "-o", "pipefail", "-c"]
ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    TF_CPP_MIN_LOG_LEVEL=2 \
    HOME=/home/tlp

RUN groupadd --gid 1000 tlp && useradd --uid 1000 --gid tlp --home-dir /home/tlp --create-home tlp \
    && chmod 1777 /home/tlp

# One layer, so nothing removed here is stored: the serving dependencies and tensorflow-cpu without
# bytecode (compiled below for what serving imports), then what serving never reads: TensorFlow's
# C++ headers (240 MB), the static symbol tables of the shared libraries (strip --strip-unneeded
# keeps the dynamic symbols loading needs; 260 MB, TensorFlow's 230), the packages' own test
# suites (no module of theirs is imported outside them) and type stubs (*.pyi: for checkers, never
# imported). Not the libraries that auditwheel vendored into *.libs folders: patched by patchelf, they
# no longer load once stripped ("ELF load command address/offset not page-aligned"); the step below
# imports every module serving starts with, so a library broken here fails the build.
# binutils is Debian bookworm's, the base's release.
COPY constraints.txt pyproject.toml containers/lock_install.py /opt/tlp-lock/
RUN python /opt/tlp-lock/lock_install.py serving \
    && site="$(python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')" \
    && rm -rf "${site}/tensorflow/include" \
    && find "${site}" -type d -name tests -prune -exec rm -rf {} + \
    && find "${site}" -type f -name '*.pyi' -delete \
    && apt-get update \
    && apt-get install -y --no-install-recommends binutils=2.40-2 \
    && find "${site}" -path '*.libs' -prune -o -type f -name '*.so*' -exec strip --strip-unneeded {} + \
    && apt-get purge -y --auto-remove binutils \
    && apt-get clean \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /app
COPY pyproject.toml README.md ./
COPY components ./components
COPY pipelines ./pipelines
COPY containers/compile_imported.py /opt/tlp-lock/
# The project without its other dependencies; its `tlp` command (the pipeline's CLI) is removed, as
# it needs what this image leaves out. Then bytecode for the modules that importing the server,
# TensorFlow, KServe, its HTTP stack and google-cloud-storage loads (what tlp-serve imports before it
# is healthy), so a replica compiles next to nothing when it starts.
RUN python -m pip install --no-cache-dir --no-deps --no-compile . \
    && rm "$(command -v tlp)" \
    && python /opt/tlp-lock/lock_install.py check serving \
    && python /opt/tlp-lock/compile_imported.py tlp.pipelines.serve tensorflow kserve fastapi.responses \
       kserve.protocol.rest.v1_endpoints kserve.protocol.rest.v2_endpoints kserve.protocol.rest.server \
       uvicorn.loops.uvloop uvicorn.protocols.http.httptools_impl uvicorn.lifespan.on jinja2 PIL.Image \
       google.cloud.storage \
    && tlp-serve --help > /dev/null

ARG BASE_IMAGE
LABEL org.opencontainers.image.title="tlp-serve" \
      org.opencontainers.image.description="Transfer-learning pipeline: model server (tlp-serve)" \
      org.opencontainers.image.source="https://github.com/tlp/tlp" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.base.name="${BASE_IMAGE}"

USER 1000:1000
EXPOSE 8080
ENTRYPOINT ["tlp-serve"]
