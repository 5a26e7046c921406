#!/usr/bin/env bash
# The forwarder on this machine, from a fresh clone.
#
#   ./run_local.sh [pipeline flags...]   bootstrap, start the embedded S3 server, run the
#                                        pipeline on sample data, show what it wrote
#   ./run_local.sh stream [flags...]     bootstrap, start the embedded S3 and Pub/Sub servers,
#                                        publish a live stream, show files as windows close
#   ./run_local.sh test [pytest args]    bootstrap, then the whole test suite
#
# The virtualenv lives in .venv and is reused while setup.py is unchanged; the local
# Pub/Sub server (Google's pstest, with the patches in tools/pstest) is built with
# `go build` into .local/bin, and Prism (Beam's portable runner, at the pinned
# apache-beam's version, with the patches in tools/prism) with `go build` into .venv/bin.
set -euo pipefail
cd "$(dirname "$0")"
ROOT=$PWD
VENV=${VENV:-$ROOT/.venv}
PYTHON=${PYTHON:-python3}

PSTEST="$ROOT/.local/bin/pstest"
export PSTEST

# What a build step was made from, in 16 hex digits: its stamp, so a change rebuilds it.
digest() {
  cat "$@" | sha256sum | cut -c1-16
}

bootstrap() {
  local stamp="$VENV/.installed-$(digest setup.py)"
  if [ ! -f "$stamp" ]; then
    echo "== setting up $VENV"
    "$PYTHON" -m venv "$VENV"
  fi
  # The Go builds (a few minutes on a fresh machine, CPU-bound) go on beside pip's
  # install (mostly downloads), in the background.
  build_go_tools &
  local go_tools=$!
  if [ ! -f "$stamp" ]; then
    "$VENV/bin/pip" install --quiet --upgrade pip
    "$VENV/bin/pip" install --quiet -e ".[test]"
    rm -f "$VENV"/.installed-*
    touch "$stamp"
  fi
  if ! wait "$go_tools"; then
    echo "building Prism or the local Pub/Sub server failed (above)" >&2
    exit 1
  fi
}

# Prism and the local Pub/Sub server, each unless built from what is here already.
build_go_tools() {
  local go_stamp
  go_stamp="$ROOT/.local/pstest-$(digest tools/pstest/go.mod tools/pstest/go.sum tools/pstest/*.go tools/pstest/*.patch)"
  local beam_version
  beam_version=$(sed -n 's/.*"apache-beam==\([0-9.]*\)".*/\1/p' setup.py)
  local prism_stamp
  prism_stamp="$VENV/.prism-$beam_version-$(digest tools/prism/go.mod tools/prism/go.sum tools/prism/*.patch)"
  if [ ! -x "$VENV/bin/prism" ] || [ ! -f "$prism_stamp" ]; then
    build_prism "$beam_version"
    rm -f "$VENV"/.prism-*
    touch "$prism_stamp"
  fi
  if [ ! -x "$PSTEST" ] || [ ! -f "$go_stamp" ]; then
    build_pstest
    rm -f "$ROOT"/.local/pstest-*
    touch "$go_stamp"
  fi
}

# Prism, Beam's portable runner, from Beam's Go module at the pinned apache-beam's
# version (from the Go module proxy) with tools/prism's patches applied: see
# tools/prism/README.md for what each one mends.
build_prism() {
  local version=$1
  echo "== building Prism $version (Beam's portable runner, tools/prism's patches) with go build"
  if ! grep -q "github.com/apache/beam/sdks/v2 v$version " tools/prism/go.mod; then
    echo "tools/prism/go.mod does not require Beam's Go module v$version (setup.py's apache-beam)" >&2
    exit 1
  fi
  patched_module "github.com/apache/beam/sdks/v2@v$version" beam-sdks tools/prism
  # Builds Prism, then fetches and compiles what the patches' own Go tests need; the
  # suite runs them (tests/pipeline/test_prism_patches.py).
  (cd tools/prism && go build -o "$VENV/bin/prism" github.com/apache/beam/sdks/v2/go/cmd/prism &&
    go test -run '^$' github.com/apache/beam/sdks/v2/go/pkg/beam/runners/prism/internal/jobservices \
      github.com/apache/beam/sdks/v2/go/pkg/beam/runners/prism/internal \
      github.com/apache/beam/sdks/v2/go/pkg/beam/runners/prism/internal/engine >/dev/null)
}

# Google's Pub/Sub fake from the Go module that tools/pstest/go.mod requires, with
# tools/pstest's patches applied: see tools/pstest/README.md for what each one mends.
build_pstest() {
  local version
  version=$(sed -n 's#^require cloud.google.com/go/pubsub/v2 \(v[^ ]*\)$#\1#p' tools/pstest/go.mod)
  if [ -z "$version" ]; then
    echo "tools/pstest/go.mod has no one-line require of cloud.google.com/go/pubsub/v2" >&2
    exit 1
  fi
  echo "== building the local Pub/Sub server (pstest $version, tools/pstest's patches) with go build"
  patched_module "cloud.google.com/go/pubsub/v2@$version" pubsub-v2 tools/pstest
  mkdir -p "$ROOT/.local/bin"
  (cd tools/pstest && go build -o "$PSTEST" .)
}

# A Go module from the module proxy (`go mod download`), copied to .local/$2 with the
# patches in $3 applied; the go.mod in $3 replaces the module with that copy.
patched_module() {
  local module=$1 copy="$ROOT/.local/$2" patches=$3 source
  mkdir -p "$ROOT/.local"
  source=$(cd "$ROOT/.local" && go mod download -json "$module" |
    sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p')
  if [ -z "$source" ]; then
    echo "go mod download found no $module" >&2
    exit 1
  fi
  rm -rf "$copy"
  cp -r "$source" "$copy"
  chmod -R u+w "$copy"
  for change in "$patches"/*.patch; do
    patch --quiet --forward --no-backup-if-mismatch -p1 -d "$copy" <"$change"
  done
}

free_port() {
  "$VENV/bin/python" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

start_s3() {
  S3_PORT=$(free_port)
  S3_ENDPOINT="http://127.0.0.1:$S3_PORT"
  "$VENV/bin/moto_server" -H 127.0.0.1 -p "$S3_PORT" >"$WORK/moto.log" 2>&1 &
  S3_PID=$!
  for _ in $(seq 1 100); do
    if "$VENV/bin/python" -c "import urllib.request; urllib.request.urlopen('$S3_ENDPOINT/moto-api/')" 2>/dev/null; then
      echo "== embedded S3 (moto server) on $S3_ENDPOINT"
      return
    fi
    sleep 0.1
  done
  echo "the embedded S3 server did not start; its log:" >&2
  cat "$WORK/moto.log" >&2
  exit 1
}

start_pubsub() {
  local port
  port=$(free_port)
  "$PSTEST" -port "$port" >"$WORK/pstest.log" 2>&1 &
  PUBSUB_PID=$!
  for _ in $(seq 1 100); do
    if grep -q "listening on" "$WORK/pstest.log" 2>/dev/null; then
      export PUBSUB_EMULATOR_HOST="127.0.0.1:$port"
      echo "== local Pub/Sub (pstest) on $PUBSUB_EMULATOR_HOST"
      return
    fi
    sleep 0.1
  done
  echo "the local Pub/Sub server did not start; its log:" >&2
  cat "$WORK/pstest.log" >&2
  exit 1
}

cleanup() {
  for pid in ${PIPELINE_PID:-} ${PUBLISHER_PID:-} ${PUBSUB_PID:-} ${S3_PID:-}; do
    kill "$pid" 2>/dev/null || true
  done
  wait 2>/dev/null || true
  [ -n "${WORK:-}" ] && rm -rf "$WORK"
}

demo() {
  WORK=$(mktemp -d)
  trap cleanup EXIT
  start_s3
  export AWS_ACCESS_KEY_ID=local AWS_SECRET_ACCESS_KEY=local AWS_DEFAULT_REGION=us-east-1
  local bucket=mparticle-demo
  "$VENV/bin/python" -c "import boto3; boto3.client('s3', endpoint_url='$S3_ENDPOINT').create_bucket(Bucket='$bucket')"
  echo "== sample input in $WORK/input"
  mkdir -p "$WORK/input"
  cp ../shared/fixtures/mparticle-docs/eventsapi.sample.json "$WORK/input/" 2>/dev/null \
    || cp tests/data/eventsapi.sample.json "$WORK/input/"
  "$VENV/bin/python" -m pipeline.tools.sample_data --batches 5000 --devices 300 --out "$WORK/input/generated.ndjson.gz"
  printf 'this line is not JSON\n{"events": "not a list"}\n' >"$WORK/input/bad.ndjson"
  echo "== running the pipeline (its log names the engine that runs it)"
  "$VENV/bin/python" -m pipeline \
    --s3_bucket_name="$bucket" --s3_endpoint_url="$S3_ENDPOINT" \
    --input="$WORK/input/*" --folder_name=mparticle --store_data_in_folders_by_date=true \
    "$@"
  echo "== what it wrote to s3://$bucket"
  "$VENV/bin/python" -m pipeline.tools.show_output --s3_bucket_name="$bucket" --s3_endpoint_url="$S3_ENDPOINT"
}

stream() {
  WORK=$(mktemp -d)
  trap cleanup EXIT
  trap 'echo; echo "== stopping"; exit 0' INT TERM
  start_s3
  start_pubsub
  export AWS_ACCESS_KEY_ID=local AWS_SECRET_ACCESS_KEY=local AWS_DEFAULT_REGION=us-east-1
  local bucket=mparticle-live topic=projects/local-project/topics/mparticle
  "$VENV/bin/python" -c "import boto3; boto3.client('s3', endpoint_url='$S3_ENDPOINT').create_bucket(Bucket='$bucket')"
  "$VENV/bin/python" -c "from pipeline.tools.publish_sample import create_topic_and_subscription as c; c('$topic')"
  echo "== forwarding projects/local-project/subscriptions/mparticle live (10-second windows for the demo)"
  "$VENV/bin/python" -m pipeline \
    --s3_bucket_name="$bucket" --s3_endpoint_url="$S3_ENDPOINT" \
    --input_subscription=projects/local-project/subscriptions/mparticle \
    --folder_name=mparticle --store_data_in_folders_by_date=true \
    --window_size_s=10 --dead_letter_flush_s=10 "$@" >"$WORK/pipeline.log" 2>&1 &
  PIPELINE_PID=$!
  echo "== publishing 20 batches a second from 200 devices for 10 minutes (pipeline log: $WORK/pipeline.log)"
  "$VENV/bin/python" -m pipeline.tools.publish_sample --topic="$topic" --per_second=20 --seconds=600 \
    >"$WORK/publisher.log" 2>&1 &
  PUBLISHER_PID=$!
  echo "== files as windows close (Ctrl-C stops everything)"
  "$VENV/bin/python" -m pipeline.tools.show_output --s3_bucket_name="$bucket" \
    --s3_endpoint_url="$S3_ENDPOINT" --watch=2
}

bootstrap
case "${1:-}" in
  stream)
    shift
    stream "$@"
    ;;
  test)
    shift
    "$VENV/bin/ruff" check .
    # Two processes (pytest-xdist): the suite spends most of its time waiting on
    # leases, windows and session gaps, not on the CPU (121-136% of 2 cores with two).
    # Later arguments win: `./run_local.sh test -n 0 -k ...` runs in this process.
    exec "$VENV/bin/python" -m pytest tests --numprocesses=2 "$@"
    ;;
  *)
    demo "$@"
    ;;
esac
