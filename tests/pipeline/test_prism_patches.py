"""The patches Prism is built with (`tools/prism`) carry Go tests of their own: they run
here, in the copy of Beam's Go module that `run_local.sh` patched and built Prism from."""

from __future__ import annotations

import re
import shutil
import subprocess

from pipeline.tools.local_services import ROOT

PATCHED = ROOT / ".local" / "beam-sdks"
METRICS_STORE = "github.com/apache/beam/sdks/v2/go/pkg/beam/runners/prism/internal/jobservices"


def test_the_metrics_store_patches_pass_their_go_tests():
    """Beam's own tests of Prism's metrics store and the two of the patches (short ids
    per environment; payloads of an unknown short id from several bundles kept)."""
    assert PATCHED.is_dir(), f"no patched Beam module at {PATCHED}: ./run_local.sh makes it"
    go = shutil.which("go")
    assert go, "no go on PATH (./run_local.sh builds Prism with it)"
    result = subprocess.run(
        [go, "test", "-count=1", "-v", "-run", "^Test_metricsStore", METRICS_STORE],
        cwd=ROOT / "tools" / "prism", capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    passed = set(re.findall(r"^--- PASS: (\S+)", result.stdout, re.MULTILINE))
    assert {"Test_metricsStore_ShortIDsPerWorker",
            "Test_metricsStore_UnknownShortIDOfTwoBundles"} <= passed, result.stdout
