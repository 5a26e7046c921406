#!/usr/bin/env bash
# Installs the forwarder and its live engine into a virtualenv: the steps the
# container image (deploy/Dockerfile) and ./run_local.sh both take.
#
#   deploy/install.sh PREFIX [EXTRAS]      e.g. deploy/install.sh /opt/forwarder dask
#
# PREFIX/bin/mparticle-s3-forwarder is the console command; PREFIX/bin/prism the
# patched Prism that live runs use (built with Go: `go` must be on PATH, and the
# Go module proxy reachable). Run from a clone (or an unpacked source archive).
set -euo pipefail

# pip's install of the project (`.`) into the virtualenv $1 (made if missing), with
# the extras $2 (comma-separated, may be empty); $3 "editable" for a development one.
install_package() {
  local prefix=$1 extras=${2:-} mode=${3:-}
  [ -x "$prefix/bin/python" ] || "${PYTHON:-python3}" -m venv "$prefix"
  "$prefix/bin/pip" install --quiet --upgrade pip
  local target="."
  [ -n "$extras" ] && target=".[$extras]"
  if [ "$mode" = editable ]; then
    "$prefix/bin/pip" install --quiet -e "$target"
  else
    "$prefix/bin/pip" install --quiet "$target"
  fi
}

# Prism, built by the package's own builder (`mparticle-s3-forwarder install-engine`),
# which needs only the standard library: any Python 3 runs it from the source tree.
# $1: the binary to write; $2: where the patched Go sources go.
install_engine() {
  "${PYTHON:-python3}" -m pipeline.engine --into "$1" --work "$2"
}

if [ "${BASH_SOURCE[0]}" = "$0" ]; then
  cd "$(dirname "$0")/.."
  prefix=${1:?usage: deploy/install.sh PREFIX [EXTRAS]}
  install_package "$prefix" "${2:-}"
  work=$(mktemp -d)
  install_engine "$prefix/bin/prism" "$work"
  rm -rf "$work"
  "$prefix/bin/mparticle-s3-forwarder" --help >/dev/null
  echo "installed: $prefix/bin/mparticle-s3-forwarder, live engine $prefix/bin/prism"
fi
