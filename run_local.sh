#!/usr/bin/env bash
# The forwarder on this machine, from a fresh clone.
#
#   ./run_local.sh [pipeline flags...]   bootstrap, start the embedded S3 server, run the
#                                        pipeline on sample data, show what it wrote
#   ./run_local.sh stream [flags...]     bootstrap, start the embedded S3 and Pub/Sub servers,
#                                        publish a live stream, show files as windows close
#   ./run_local.sh test [pytest args]    bootstrap, then the whole test suite
#   ./run_local.sh mutation              bootstrap, then mutation testing of the core
#                                        modules and their scores (tests/mutation)
#
# The virtualenv lives in .venv and is reused while setup.py is unchanged; the local
# Pub/Sub server (Google's pstest, with the patches in tools/pstest) is built with
# `go build` into .local/bin, and Prism (Beam's portable runner, at the pinned
# apache-beam's version, with the patches in pipeline/engine/prism) into .venv/bin.
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

# Runs a bootstrap step ($1 says what it is), then says how long it took.
step() {
  local what=$1 started=$SECONDS
  shift
  echo "== $what ..."
  "$@"
  echo "== $what: done in $((SECONDS - started)) s"
}

bootstrap() {
  local stamp="$VENV/.installed-$(digest setup.py)"
  local started=$SECONDS
  if [ ! -f "$stamp" ]; then
    step "making the virtualenv $VENV" "$PYTHON" -m venv "$VENV"
  fi
  # The Go builds (CPU-bound, a few minutes on a fresh machine) run beside pip's
  # install (mostly downloads), in the background.
  build_go_tools &
  local go_tools=$!
  if [ ! -f "$stamp" ]; then
    step "installing the project and its test tools with pip (about 2 minutes)" pip_install
    rm -f "$VENV"/.installed-*
    touch "$stamp"
  fi
  if ! wait "$go_tools"; then
    echo "building Prism or the local Pub/Sub server failed (above)" >&2
    exit 1
  fi
  if [ $((SECONDS - started)) -gt 5 ]; then
    echo "== ready in $((SECONDS - started)) s"
  fi
}

# The same steps as the container image's (deploy/install.sh), here with the test
# tools and Dask, and an editable install.
source deploy/install.sh

pip_install() {
  install_package "$VENV" test,dask editable
}

# Prism and the local Pub/Sub server, each unless built from what is here already.
build_go_tools() {
  local engine=pipeline/engine/prism
  local beam_version
  beam_version=$(sed -n 's/.*"apache-beam==\([0-9.]*\)".*/\1/p' setup.py)
  if ! grep -q "github.com/apache/beam/sdks/v2 v$beam_version " "$engine/go.mod"; then
    echo "$engine/go.mod does not require Beam's Go module v$beam_version (setup.py's apache-beam)" >&2
    exit 1
  fi
  local prism_stamp
  prism_stamp="$VENV/.prism-$beam_version-$(digest "$engine"/go.mod "$engine"/go.sum "$engine"/*.patch pipeline/engine/__init__.py)"
  local go_stamp
  go_stamp="$ROOT/.local/pstest-$(digest tools/pstest/go.mod tools/pstest/go.sum tools/pstest/*.go tools/pstest/*.patch)"
  if [ ! -x "$VENV/bin/prism" ] || [ ! -f "$prism_stamp" ]; then
    step "building Prism $beam_version, the live engine (Go; pipeline/engine/prism's patches)" build_prism
    rm -f "$VENV"/.prism-*
    touch "$prism_stamp"
  fi
  if [ ! -x "$PSTEST" ] || [ ! -f "$go_stamp" ]; then
    step "building the local Pub/Sub server (Go; tools/pstest's patches)" build_pstest
    rm -f "$ROOT"/.local/pstest-*
    touch "$go_stamp"
  fi
}

# Prism with the engine's own builder (deploy/install.sh, as the image builds it).
# Then what the patches' own Go tests need is fetched and compiled; the suite runs
# them (tests/pipeline/test_prism_patches.py).
build_prism() {
  install_engine "$VENV/bin/prism" "$ROOT/.local" >/dev/null
  (cd "$ROOT/.local/prism" &&
    go test -run '^$' github.com/apache/beam/sdks/v2/go/pkg/beam/runners/prism/internal/jobservices \
      github.com/apache/beam/sdks/v2/go/pkg/beam/runners/prism/internal \
      github.com/apache/beam/sdks/v2/go/pkg/beam/runners/prism/internal/engine >/dev/null)
}

# Google's Pub/Sub fake from the Go module that tools/pstest/go.mod requires, with
# tools/pstest's patches applied (tools/pstest/README.md), by the same builder.
build_pstest() {
  "$PYTHON" -c 'import sys; from pathlib import Path; from pipeline.engine import build_patched
build_patched(Path("tools/pstest"), "cloud.google.com/go/pubsub/v2", "pubsub-v2", ".",
              Path(sys.argv[1]), Path(sys.argv[2]))' "$PSTEST" "$ROOT/.local"
}

run_mutmut() {
  if ! "$VENV/bin/mutmut" run "$@" >.local/mutmut-run.log 2>&1; then
    tr '\r' '\n' <.local/mutmut-run.log | tail -n 30 >&2
    echo "mutmut failed (above; the whole log: .local/mutmut-run.log)" >&2
    exit 1
  fi
}

free_port() {
  "$VENV/bin/python" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

start_s3() {
  S3_PORT=$(free_port)
  S3_ENDPOINT="http://127.0.0.1:$S3_PORT"
  # In a session of their own (setsid), the local servers never get a terminal's Ctrl-C:
  # the forwarder's drain still needs them.
  setsid "$VENV/bin/moto_server" -H 127.0.0.1 -p "$S3_PORT" >"$WORK/moto.log" 2>&1 &
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
  setsid "$PSTEST" -port "$port" >"$WORK/pstest.log" 2>&1 &
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
  for pid in ${WATCH_PID:-} ${PUBLISHER_PID:-} ${PUBSUB_PID:-} ${S3_PID:-}; do
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
  start_s3
  start_pubsub
  export AWS_ACCESS_KEY_ID=local AWS_SECRET_ACCESS_KEY=local AWS_DEFAULT_REGION=us-east-1
  local bucket=mparticle-live topic=projects/local-project/topics/mparticle
  "$VENV/bin/python" -c "import boto3; boto3.client('s3', endpoint_url='$S3_ENDPOINT').create_bucket(Bucket='$bucket')"
  "$VENV/bin/python" -c "from pipeline.tools.publish_sample import create_topic_and_subscription as c; c('$topic')"
  echo "== publishing 20 batches a second from 200 devices for 10 minutes (its log: $WORK/publisher.log)"
  "$VENV/bin/python" -m pipeline.tools.publish_sample --topic="$topic" --per_second=20 --seconds=600 \
    >"$WORK/publisher.log" 2>&1 &
  PUBLISHER_PID=$!
  # Background jobs of a script ignore Ctrl-C: it reaches the forwarder alone, which
  # drains; the publisher and the listing are stopped after it.
  "$VENV/bin/python" -m pipeline.tools.show_output --s3_bucket_name="$bucket" \
    --s3_endpoint_url="$S3_ENDPOINT" --prefix=mparticle/ --watch=2 &
  WATCH_PID=$!
  echo "== forwarding projects/local-project/subscriptions/mparticle live (10-second windows for the demo); Ctrl-C stops it"
  local code=0
  "$VENV/bin/python" -m pipeline \
    --s3_bucket_name="$bucket" --s3_endpoint_url="$S3_ENDPOINT" \
    --input_subscription=projects/local-project/subscriptions/mparticle \
    --folder_name=mparticle --store_data_in_folders_by_date=true \
    --window_size_s=10 --dead_letter_flush_s=10 "$@" || code=$?
  kill "$WATCH_PID" "$PUBLISHER_PID" 2>/dev/null || true
  wait "$WATCH_PID" "$PUBLISHER_PID" 2>/dev/null || true
  echo "== what it wrote to s3://$bucket (the forwarder exited $code)"
  "$VENV/bin/python" -m pipeline.tools.show_output --s3_bucket_name="$bucket" \
    --s3_endpoint_url="$S3_ENDPOINT" --prefix=mparticle/ --most=5
  return "$code"
}

bootstrap
case "${1:-}" in
  stream)
    shift
    stream "$@"
    ;;
  mutation)
    shift
    # Outside the suite (45 minutes or more on 2 cores): mutmut mutates the modules that
    # setup.cfg's [mutmut] names, runs the fast tests that reach each mutant, and the
    # score per module follows (tests/mutation). Afresh each time: results kept from an
    # older tree would not be this one's.
    rm -rf mutants
    mkdir -p .local
    # One S3 server for the test process of every mutant (tests/conftest.py).
    WORK=$(mktemp -d)
    trap cleanup EXIT
    start_s3
    export MPARTICLE_S3_TEST_ENDPOINT=$S3_ENDPOINT
    step "mutation testing (mutmut's own output: .local/mutmut-run.log)" run_mutmut "$@"
    "$VENV/bin/python" -m tests.mutation.score
    ;;
  test)
    shift
    "$VENV/bin/ruff" check .
    # The docs site (docs/, mkdocs.yml), built as its readers get it: a broken link or
    # a page missing from the navigation fails here.
    NO_MKDOCS_2_WARNING=1 "$VENV/bin/mkdocs" build --strict --quiet -d .local/site
    # Two processes (pytest-xdist): the suite spends most of its time waiting on
    # leases, windows and session gaps, not on the CPU (121-136% of 2 cores with two).
    # Later arguments win: `./run_local.sh test -n 0 -k ...` runs in this process.
    exec "$VENV/bin/python" -m pytest tests --numprocesses=2 "$@"
    ;;
  *)
    demo "$@"
    ;;
esac
