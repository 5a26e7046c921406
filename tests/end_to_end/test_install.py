"""Installing for production, as an operator would without run_local.sh: the install
script (the container image's build step) into a new virtualenv, its console command
and engine used for a real run; the container image, the systemd unit and the
Kubernetes Deployment checked with the tools their platforms use."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from pipeline.options import OPTIONS_BY_NAME
from pipeline.tools.sample_data import generate
from tests.conftest import ROOT, list_keys

DEPLOY = ROOT / "deploy"


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """deploy/install.sh into a new virtualenv, without the dask extra."""
    prefix = tmp_path_factory.mktemp("install") / "forwarder"
    done = subprocess.run([str(DEPLOY / "install.sh"), str(prefix)], cwd=ROOT,
                          capture_output=True, text=True, timeout=900,
                          env={**os.environ, "PYTHON": sys.executable})
    assert done.returncode == 0, done.stdout + done.stderr
    return prefix


def forwarder(prefix: Path, *args: str, **kwargs) -> subprocess.CompletedProcess:
    """The installed console command, run outside the clone."""
    return subprocess.run([str(prefix / "bin" / "mparticle-s3-forwarder"), *args],
                          cwd=prefix, capture_output=True, text=True, timeout=300, **kwargs)


def test_the_install_gives_the_console_command_and_its_engine(
    installed, s3_endpoint, s3_client, bucket, tmp_path
):
    helped = forwarder(installed, "--help")
    assert helped.returncode == 0 and "usage: mparticle-s3-forwarder" in helped.stdout
    assert "--metrics_port" in helped.stdout
    (tmp_path / "in.ndjson").write_text("".join(json.dumps(b) + "\n" for b in generate(40, 5)))
    ran = forwarder(installed, f"--s3_bucket_name={bucket}", f"--s3_endpoint_url={s3_endpoint}",
                    f"--input={tmp_path}/in.ndjson", "--runner=PrismRunner",
                    "--folder_name=installed")
    assert ran.returncode == 0, ran.stderr[-3000:]
    # Prism found beside the installed Python, where install-engine put it.
    assert "running on PrismRunner" in ran.stderr
    assert "reconciled" in ran.stdout and "NOT" not in ran.stdout
    assert any(key.endswith(".txt") for key in list_keys(s3_client, bucket, "installed/"))


def test_dask_without_its_extra_says_which_extra_to_install(installed, bucket, tmp_path):
    (tmp_path / "in.ndjson").write_text(json.dumps(next(iter(generate(1, 1)))) + "\n")
    ran = forwarder(installed, f"--s3_bucket_name={bucket}", f"--input={tmp_path}/in.ndjson",
                    "--runner=dask")
    assert ran.returncode == 2, ran.stderr
    assert ran.stderr.strip().endswith(
        "error: --runner=dask needs Dask, which the forwarder's dask extra installs: pip "
        "install 'mparticle-s3-forwarder[dask]' (from a clone: pip install '.[dask]').")


def test_the_install_ships_the_engine_sources(installed):
    site = next((installed / "lib").glob("python3*/site-packages"))
    shipped = {path.name for path in (site / "pipeline" / "engine" / "prism").iterdir()}
    assert {"go.mod", "go.sum", "decode-without-tees.patch"} <= shipped


def test_the_container_image_builds_with_the_install_script_and_passes_hadolint():
    dockerfile = (DEPLOY / "Dockerfile").read_text()
    hadolint = Path(sys.executable).with_name("hadolint")
    linted = subprocess.run([str(hadolint), str(DEPLOY / "Dockerfile")], capture_output=True,
                            text=True)
    assert linted.returncode == 0, linted.stdout + linted.stderr
    assert "RUN deploy/install.sh /opt/forwarder" in dockerfile
    runtime = dockerfile[dockerfile.rindex("\nFROM "):]  # the last stage: what runs
    assert re.search(r"^USER 10001$", runtime, re.M)
    assert 'ENTRYPOINT ["mparticle-s3-forwarder"]' in runtime
    assert "golang" not in runtime and "install.sh" not in runtime


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="no systemd-analyze here")
def test_the_systemd_unit_verifies(tmp_path):
    """`systemd-analyze verify`, with ExecStart pointed at an executable of this machine
    (it checks that the command exists); any complaint fails the test."""
    unit = (DEPLOY / "mparticle-s3-forwarder.service").read_text()
    assert "KillMode=mixed" in unit and "KillSignal=SIGTERM" in unit
    stop_s = int(re.search(r"^TimeoutStopSec=(\d+)$", unit, re.M).group(1))
    assert stop_s > OPTIONS_BY_NAME["drain_timeout_s"].default
    copy = tmp_path / "mparticle-s3-forwarder.service"
    copy.write_text(unit.replace("/opt/mparticle-s3-forwarder/bin/mparticle-s3-forwarder",
                                 shutil.which("true")))
    verified = subprocess.run(["systemd-analyze", "verify", str(copy)], capture_output=True,
                              text=True)
    assert verified.returncode == 0 and not verified.stderr.strip(), verified.stderr


def test_the_kubernetes_deployment_drains_within_its_grace_period():
    [deployment] = list(yaml.safe_load_all((DEPLOY / "kubernetes.yaml").read_text()))
    pod = deployment["spec"]["template"]["spec"]
    assert pod["terminationGracePeriodSeconds"] > OPTIONS_BY_NAME["drain_timeout_s"].default
    assert pod["securityContext"]["runAsNonRoot"]
    [container] = pod["containers"]
    port = int(re.search(r"--metrics_port=(\d+)", " ".join(container["args"])).group(1))
    assert container["ports"][0]["containerPort"] == port
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
