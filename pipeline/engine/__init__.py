"""The engine of live runs: Prism, Beam's portable runner, built with Go from Beam's
own Go module at the pinned apache-beam's version, with the patches in `prism/`
(its README says what each one mends).

    mparticle-s3-forwarder install-engine          # into this Python's bin folder
    python -m pipeline.engine --into DIR/prism     # the same, from a clone

It needs Go (`go` on PATH) and the Go module proxy; the Python side needs nothing
but the standard library, so `run_local.sh` builds it beside pip's install.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

__all__ = ["EngineBuildError", "build_patched", "install_engine", "main"]

PRISM_SOURCES = Path(__file__).resolve().parent / "prism"
BEAM_MODULE = "github.com/apache/beam/sdks/v2"
PRISM_PACKAGE = f"{BEAM_MODULE}/go/cmd/prism"
# Where a build's patched module copies and go.mod go when no folder is given.
DEFAULT_WORK = Path.home() / ".cache" / "mparticle-s3-forwarder" / "engine"


class EngineBuildError(RuntimeError):
    """The engine could not be built; one sentence says why."""


def _run(command: list[str], cwd: Path) -> str:
    done = subprocess.run(command, cwd=cwd, capture_output=True, text=True)
    if done.returncode != 0:
        raise EngineBuildError(f"{' '.join(command[:3])} failed in {cwd}: "
                               f"{(done.stderr or done.stdout).strip()[-2000:]}")
    return done.stdout


def _required_version(go_mod: str, module: str) -> str:
    found = re.search(rf"^\s*(?:require\s+)?{re.escape(module)} (v\S+)", go_mod, re.MULTILINE)
    if not found:
        raise EngineBuildError(f"go.mod requires no version of {module}.")
    return found.group(1)


def build_patched(sources: Path, module: str, copy_name: str, package: str, output: Path,
                  work: Path) -> Path:
    """Builds `package` into `output` from the Go module in `sources` (go.mod, go.sum,
    *.patch, its own Go files), with `module` (from the module proxy, at the version
    go.mod requires) copied to `work`/`copy_name` and patched; go.mod's `replace` of
    `module` is pointed at the copy. Returns the folder the module was copied to and
    built in (for `go test` there)."""
    sources, output, work = sources.resolve(), output.resolve(), work.resolve()
    if shutil.which("go") is None:
        raise EngineBuildError("building needs Go: put `go` (1.22 or later) on PATH.")
    go_mod = (sources / "go.mod").read_text()
    version = _required_version(go_mod, module)
    work.mkdir(parents=True, exist_ok=True)
    copy = work / copy_name
    builder = work / sources.name
    listing = json.loads(_run(["go", "mod", "download", "-json", f"{module}@{version}"],
                              cwd=work))
    shutil.rmtree(copy, ignore_errors=True)
    shutil.copytree(listing["Dir"], copy)
    for path in [copy, *copy.rglob("*")]:  # the module cache's copy is read-only
        path.chmod(path.stat().st_mode | 0o200)
    shutil.rmtree(builder, ignore_errors=True)
    builder.mkdir()
    for each in sorted(sources.iterdir()):
        if each.suffix == ".patch":
            _run(["patch", "--quiet", "--forward", "--no-backup-if-mismatch", "-p1", "-d",
                  str(copy), "-i", str(each)], cwd=work)
        elif each.is_file():
            shutil.copy(each, builder / each.name)
    (builder / "go.mod").write_text(re.sub(
        rf"^replace {re.escape(module)} => .*$", f"replace {module} => ../{copy.name}",
        go_mod, flags=re.MULTILINE))
    output.parent.mkdir(parents=True, exist_ok=True)
    _run(["go", "build", "-o", str(output), package], cwd=builder)
    return builder


def install_engine(into: Path, work: Path = DEFAULT_WORK) -> Path:
    """Builds the patched Prism into `into` (a file path); returns its folder of Go
    sources (Beam's tests of the patches run there)."""
    return build_patched(PRISM_SOURCES, BEAM_MODULE, "beam-sdks", PRISM_PACKAGE, into, work)


def default_prism_path() -> Path:
    """Where a run looks for Prism first (`pipeline.runners.prism.binary`)."""
    return Path(sys.executable).parent / "prism"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="mparticle-s3-forwarder install-engine",
        description="Build Prism, the engine of live runs (needs Go and the Go module proxy).")
    parser.add_argument("--into", type=Path, default=default_prism_path(),
                        help="the binary to write (default: %(default)s, where runs find it)")
    parser.add_argument("--work", type=Path, default=DEFAULT_WORK,
                        help="folder for the patched Go sources (default: %(default)s)")
    args = parser.parse_args(argv)
    print(f"building Prism into {args.into} (Go: {shutil.which('go') or 'not found'})",
          file=sys.stderr, flush=True)
    started = time.monotonic()
    try:
        install_engine(args.into, args.work)
    except (EngineBuildError, OSError) as err:
        print(f"error: install-engine: {err}", file=sys.stderr)
        return 1
    print(f"built {args.into} in {time.monotonic() - started:.0f} s", file=sys.stderr)
    return 0

