#!/usr/bin/env bash
# Builds a stand-in Python base image from Debian's own packages, for machines that cannot pull
# the pinned bases from Docker Hub (python:3.11.7-slim-bookworm, tensorflow/tensorflow:2.21.0-gpu)
# but reach a Debian mirror and PyPI. It gets a LOCAL name (default tlp-local/debian-python:bookworm):
# an official image name is never retagged, so nobody mistakes it for the real thing.
#
#   containers/standin-base.sh [NAME:TAG]       # does nothing if NAME:TAG already exists
#   make images-offline                         # builds it, then all images on it
#
# Debian bookworm's python3 is 3.11 (the lock's Python). Needs root, debootstrap and docker.
set -euo pipefail

name="${1:-tlp-local/debian-python:bookworm}"
mirror="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"

# Library images (no namespace) and the namespaces of the pinned bases are official names.
repo="${name%%:*}"
namespace=""
[[ "$repo" == */* ]] && namespace="${repo%%/*}"
if [[ -z "$namespace" || "$namespace" =~ ^(library|docker\.io|index\.docker\.io|tensorflow|python|debian|nvidia)$ ]]; then
  echo "refusing to call a stand-in base '$name': that looks like an official image's name; use a local name such as tlp-local/debian-python:bookworm" >&2
  exit 2
fi
if docker image inspect "$name" > /dev/null 2>&1; then
  echo "stand-in base $name already exists"
  exit 0
fi
for tool in debootstrap docker; do
  command -v "$tool" > /dev/null || { echo "$0 needs $tool (apt-get install debootstrap docker.io)" >&2; exit 2; }
done

root="$(mktemp -d /tmp/tlp-standin.XXXXXX)"
trap 'rm -rf "$root"' EXIT
started=$SECONDS
# minbase: essential packages and apt only; passwd brings useradd/groupadd for the Dockerfiles.
debootstrap --variant=minbase \
  --include=python3,python3-venv,python3-pip,ca-certificates,passwd \
  bookworm "$root" "$mirror"
# Debian marks its Python as externally managed (PEP 668); this image is a container base,
# where pip-installing into the system Python is the point (as in the official python image).
rm -f "$root"/usr/lib/python3.*/EXTERNALLY-MANAGED
ln -sf python3 "$root/usr/bin/python"
# pip inside the build must trust what the host trusts (e.g. a TLS-intercepting proxy's CA).
cp /etc/ssl/certs/ca-certificates.crt "$root/etc/ssl/certs/ca-certificates.crt"
# Like Debian's own slim images: no documentation, manual pages or translations (about 50 MB),
# now or from packages installed later; copyright files stay.
cat > "$root/etc/dpkg/dpkg.cfg.d/slim" <<'SLIM'
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/info/*
path-exclude /usr/share/locale/*
path-exclude /usr/share/lintian/*
SLIM
find "$root/usr/share/doc" -mindepth 1 -not -name copyright -not -type d -delete
rm -rf "$root"/usr/share/man/* "$root"/usr/share/info/* "$root"/usr/share/locale/* "$root"/usr/share/lintian/*
# Nothing of apt's download cache or lists is needed in a base image.
rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/*
tar -C "$root" -c . | docker import \
  --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
  --change 'ENV LANG=C.UTF-8' \
  --change 'CMD ["python3"]' \
  --message "stand-in for python:3.11-slim-bookworm, debootstrap minbase from $mirror" \
  - "$name"
echo "stand-in base $name built in $((SECONDS - started)) s"
