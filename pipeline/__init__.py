"""Flags → validated config → the forwarder's Beam pipeline (see `pipeline.build`)."""

import transforms  # noqa: F401  first: it quiets Beam's import-time notices
