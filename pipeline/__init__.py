"""Flags → validated config → the forwarder's Beam pipeline (see `pipeline.build`)."""
