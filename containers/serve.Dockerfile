# Serving image: `tlp serve` answers prediction requests for a registered model.
# Build from the repository root after the CPU image (`make images` passes the build arg):
#   docker build -f containers/serve.Dockerfile --build-arg CPU_IMAGE=REPO/tlp:TAG -t REPO/tlp-serve:TAG .
# Serving needs what the CPU image already holds (tensorflow-cpu, the registry client, the
# project, all from the one lock), so this image is the CPU image's layers plus its entry point:
# it adds nothing to pull or to store. The default names the CPU image of this version
# (tests/unit/test_containers.py keeps it equal to the project version).
ARG CPU_IMAGE=tlp/tlp:0.1.0
FROM ${CPU_IMAGE}

ARG CPU_IMAGE
LABEL org.opencontainers.image.title="tlp-serve" \
      org.opencontainers.image.description="Transfer-learning pipeline: model server (tlp serve)" \
      org.opencontainers.image.source="https://github.com/tlp/tlp" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.base.name="${CPU_IMAGE}"

ENV PYTHONUNBUFFERED=1
USER 1000:1000
ENTRYPOINT ["tlp", "serve"]
