#!/usr/bin/env bash
# CI docker tier, run by .ci/run after `make test`: builds the three images and runs the whole
# pipeline in them with `tlp run --runner docker`, as a non-root host user (uid 4321, made with
# useradd) and as root; tests/docker/ checks each step's image, user and network, the ownership
# of every output, and that the registered model serves. Runs as root on a fresh Debian machine
# with Debian's packages and PyPI reachable: installs and starts the Docker engine if missing, and
# builds on a stand-in base from Debian's packages when Docker Hub cannot be reached.
set -euo pipefail
cd "$(dirname "$0")/.."
started=$SECONDS
step() { printf '\n== docker tier, %d s in: %s\n' "$((SECONDS - started))" "$*"; }
apt_install() {
  [[ -n "${apt_updated:-}" ]] || { apt-get update -qq; apt_updated=1; }
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" > /dev/null
}
logs="${TLP_CI_LOGS:-/tmp/tlp-ci}"
mkdir -p "$logs"

step "Docker engine"
if ! docker info > /dev/null 2>&1; then
  command -v dockerd > /dev/null || { echo "installing Debian's docker.io"; apt_install docker.io; }
  if ! docker info > /dev/null 2>&1; then
    echo "starting dockerd (log: $logs/dockerd.log)"
    dockerd > "$logs/dockerd.log" 2>&1 &
    for _ in $(seq 60); do docker info > /dev/null 2>&1 && break; sleep 1; done
    docker info > /dev/null 2>&1 || { tail -20 "$logs/dockerd.log"; exit 1; }
  fi
fi
docker version --format 'engine {{.Server.Version}}, client {{.Client.Version}}'

# The non-root user runs its own install of tlp: .venv's Python may sit where only root can read
# it (a pyenv under /root). Built from Debian's python3 while the images build.
step "installing tlp for the non-root user in /opt/tlp-ci/venv (in the background)"
command -v /usr/bin/python3 > /dev/null && /usr/bin/python3 -c 'import ensurepip' 2> /dev/null \
  || apt_install python3 python3-venv
rm -rf /opt/tlp-ci/venv && mkdir -p /opt/tlp-ci
( /usr/bin/python3 -m venv /opt/tlp-ci/venv \
  && /opt/tlp-ci/venv/bin/python -m pip install --quiet --upgrade "pip>=24" \
  && /opt/tlp-ci/venv/bin/python -m pip install --quiet -c constraints.txt . \
  && echo "installed in $((SECONDS - started)) s, while the images built" ) > "$logs/user-venv.log" 2>&1 &
user_venv=$!

step "base images"
var() { sed -n "s/^$1 ?= //p" Makefile; }
base="$(var BASE_IMAGE)" train_base="$(var TRAIN_BASE_IMAGE)" standin="$(var STANDIN_BASE)"
pullable() { docker image inspect "$1" > /dev/null 2>&1 || timeout 120 docker pull -q "$1" > /dev/null 2>&1; }
if ! pullable "$base"; then
  echo "$base cannot be pulled: building on the stand-in $standin"; base="$standin"
fi
if ! pullable "$train_base"; then
  echo "$train_base cannot be pulled: building on the stand-in $standin"; train_base="$standin"
fi
if [[ "$base" == "$standin" || "$train_base" == "$standin" ]]; then
  command -v debootstrap > /dev/null || apt_install debootstrap
  make --no-print-directory standin-base STANDIN_BASE="$standin" > "$logs/standin.log" 2>&1 \
    || { tail -30 "$logs/standin.log"; exit 1; }
  tail -1 "$logs/standin.log"
fi
bake=0
if timeout 5 bash -c '> /dev/tcp/storage.googleapis.com/443' 2> /dev/null; then bake=1; fi
echo "bases: CPU $base, training $train_base; BAKE_WEIGHTS=$bake"

step "make images"
images_started=$SECONDS
# Each log line prefixed with the seconds since the build started: per-image build times.
make --no-print-directory images BASE_IMAGE="$base" TRAIN_BASE_IMAGE="$train_base" BAKE_WEIGHTS="$bake" 2>&1 \
  | while IFS= read -r line; do printf '%4d s  %s\n' "$((SECONDS - images_started))" "$line"; done \
  > "$logs/images.log" || { tail -60 "$logs/images.log"; exit 1; }
grep -E "Successfully tagged|pip check|installing [0-9]+ locked" "$logs/images.log" | sed 's/s  .*pip check/s  pip check/' || true
echo "$(grep -c "Using cache" "$logs/images.log" || true) build steps reused a layer already built"
echo "make images took $((SECONDS - images_started)) s (full log: $logs/images.log)"
echo "image sizes:"
docker image ls --format '{{.Repository}}:{{.Tag}}  {{.Size}}' | grep -E "^(tlp/|$standin)" | sort | sed 's/^/  /'

step "waiting for the non-root user's install"
wait "$user_venv" || { tail -40 "$logs/user-venv.log"; exit 1; }
tail -1 "$logs/user-venv.log"

step "tlp run --runner docker, as a non-root user and as root (tests/docker)"
TLP_DOCKER_TESTS=1 TLP_USER_TLP=/opt/tlp-ci/venv/bin/tlp \
  .venv/bin/python -m pytest -m docker tests/docker -v -s -p no:cacheprovider

step "done: the docker tier took $((SECONDS - started)) s"
