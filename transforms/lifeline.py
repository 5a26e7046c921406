"""Worker processes end when the process that launched the run ends.

A runner's SDK worker processes (the DirectRunner's with
--direct_running_mode=multi_processing) notice a killed launcher only when
their gRPC channel times out, and meanwhile keep writing for seconds. The
launcher puts its pid in the environment, which its workers inherit; a worker
(a process whose pid differs) watches its parent and exits as soon as it is
gone. Idempotent: one watcher per process, started from DoFn setup.
"""

from __future__ import annotations

import logging
import os
import threading
import time

LAUNCHER_PID = "MPARTICLE_S3_LAUNCHER_PID"
CHECK_EVERY_S = 0.25
_LOG = logging.getLogger(__name__)
_started = threading.Lock()
_watching = False


def exit_with_launcher() -> None:
    """In a worker process, exits it when its parent process is gone."""
    global _watching
    launcher = os.environ.get(LAUNCHER_PID)
    if not launcher or launcher == str(os.getpid()):
        return  # not launched by the forwarder, or the launcher itself
    with _started:
        if _watching:
            return
        _watching = True
    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(CHECK_EVERY_S)
        _LOG.warning("the process that started this worker is gone; exiting")
        os._exit(1)

    threading.Thread(target=watch, name="exit-with-launcher", daemon=True).start()
