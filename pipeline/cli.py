"""The console command, `mparticle-s3-forwarder` (the same as `python -m pipeline`).

    mparticle-s3-forwarder --s3_bucket_name=... --input=...            a run
    mparticle-s3-forwarder install-engine [--into PATH]                 builds Prism
"""

from __future__ import annotations

import os
import sys


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["install-engine"]:
        from pipeline import engine

        sys.exit(engine.main(argv[1:]))
    # Before gRPC loads: its fork handlers would log a line whenever the launcher
    # starts the engine with a death signal (`runners.engine_shielded`), and the
    # launcher never forks without exec.
    os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")
    from pipeline.logs import quiet_beam_notices

    quiet_beam_notices()  # before Beam is imported: it logs the notices as it loads
    from pipeline.run import main as run

    sys.exit(run(argv))
