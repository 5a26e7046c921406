"""The patches Prism is built with (`pipeline/engine/prism`) carry Go tests of their own: they run
here, in the copy of Beam's Go module that `run_local.sh` patched and built Prism from."""

from __future__ import annotations

import re
import shutil
import subprocess

from pipeline.tools.local_services import ROOT

PATCHED = ROOT / ".local" / "beam-sdks"
PRISM = "github.com/apache/beam/sdks/v2/go/pkg/beam/runners/prism/internal"
METRICS_STORE = f"{PRISM}/jobservices"


def go_tests_passed(pattern: str, package: str) -> set[str]:
    """The tests of `package` that match `pattern`, run in the patched module: the names
    of those that passed (the run itself must pass)."""
    assert PATCHED.is_dir(), f"no patched Beam module at {PATCHED}: ./run_local.sh makes it"
    go = shutil.which("go")
    assert go, "no go on PATH (./run_local.sh builds Prism with it)"
    result = subprocess.run(
        [go, "test", "-count=1", "-v", "-run", pattern, package],
        cwd=ROOT / ".local" / "prism", capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return set(re.findall(r"^--- PASS: (\S+)", result.stdout, re.MULTILINE))


def test_the_metrics_store_patches_pass_their_go_tests():
    """Beam's own tests of Prism's metrics store and the two of the patches (short ids
    per environment; payloads of an unknown short id from several bundles kept)."""
    assert {"Test_metricsStore_ShortIDsPerWorker",
            "Test_metricsStore_UnknownShortIDOfTwoBundles"} <= go_tests_passed(
        "^Test_metricsStore", METRICS_STORE)


def test_the_decoding_patch_passes_its_go_tests():
    """decode-without-tees.patch: Beam's own tests of the element decoder and of the
    element manager (which stores every bundle's output through it), and the patch's
    own (from a buffer, the decoder gives what the tee gave, as a copy, in fewer
    allocations)."""
    assert {"Test_pullDecoder", "Test_pullDecoder_BufferAndReaderAgree"} <= go_tests_passed(
        "^Test_pullDecoder", PRISM)
    assert {"TestElementManager"} <= go_tests_passed("^TestElementManager$", f"{PRISM}/engine")
