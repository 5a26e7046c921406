"""Python runs this at the start of the SDK harness processes the forwarder starts
(the DirectRunner's worker processes, Prism's), before Beam is imported there; its
folder is put first on their PYTHONPATH by `pipeline.runners.worker_environment`.
The workers log in the launcher's format (`--log_format`) and quiet Beam's notices
about its missing gcp extra, as the launcher does."""

from pipeline.logs import quiet_beam_notices, worker_logging

worker_logging()
quiet_beam_notices()
