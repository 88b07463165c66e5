# Dataflow workers' image: data prep's Beam pipeline (`--data-prep-runner dataflow`).
# Build from the repository root after the CPU image (`make images` passes the build args):
#   docker build -f containers/dataflow.Dockerfile --build-arg CPU_IMAGE=REPO/tlp:TAG -t REPO/tlp-dataflow:TAG .
# Beam's documented custom-container way: our CPU image (the project and every dependency from the
# one lock, apache-beam among them, so the workers run exactly the SDK version that submitted the
# job) plus the SDK harness's boot entry point copied from Beam's SDK image of that same version.
# Beam's SDK image as the base instead would bring its own pip-installed numpy, pillow and protobuf,
# which the lock does not choose. tests/unit/test_containers.py keeps the Beam tag equal to the lock's.
ARG CPU_IMAGE=tlp/tlp:0.1.0
ARG BEAM_SDK_IMAGE=apache/beam_python3.11_sdk:2.77.0
FROM ${BEAM_SDK_IMAGE} AS beam-sdk

FROM ${CPU_IMAGE}
COPY --from=beam-sdk /opt/apache/beam /opt/apache/beam
# The lock still holds: the boot program starts the locked apache-beam of this image.
RUN python /opt/tlp-lock/lock_install.py check

ARG CPU_IMAGE
LABEL org.opencontainers.image.title="tlp-dataflow" \
      org.opencontainers.image.description="Transfer-learning pipeline: Dataflow workers of data prep (Beam SDK harness)" \
      org.opencontainers.image.source="https://github.com/tlp/tlp" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.base.name="${CPU_IMAGE}"

ENV PYTHONUNBUFFERED=1
USER 1000:1000
ENTRYPOINT ["/opt/apache/beam/boot"]
