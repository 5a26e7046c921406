"""Python runs this at the start of the SDK harness processes the forwarder starts
(the DirectRunner's worker processes, Prism's; see `pipeline.runners`), before Beam
is imported there:
importing the forwarder's package quiets Beam's notices about its missing gcp extra,
as in the launcher."""

import transforms  # noqa: F401
