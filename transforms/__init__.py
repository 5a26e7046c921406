"""The forwarder's Beam stages, the machinery they share, its rules and its I/O clients.

Stages (Beam composites, each one PCollection in, in the order of the README's
diagram; each module's `__all__` is what it offers, its DoFns are private): read
(ReadBatches), pubsub (ReadPubSubRecords), parse (ParseBatches), apply_settings
(ApplySettings), batching (StampArrival, BatchPerDevice), live_sessions (the live
sessions' state machine, used by BatchPerDevice), write (WriteBatchFiles,
WriteDeadLetters), spill (SpillGroupAndWrite, a sliced run's grouping on disk).
Beside them: values (what flows between them), outputs (a stage's dead letters
apart), metrics (counters).

machinery/: what the Beam path and the sliced runs' workers both use, with public
names: the batching modes as strategies (modes), merging a device's batches
(merging), windows and their times (windows), file formats, namings and writing
(files), the shuffle's codec (shuffled), the spill's file format (spill_files).
rules/: pure rules (no Beam, no network, no disk). io/: clients of S3, input files,
Pub/Sub and the launcher's progress channel, and where data is (locations).

No module here names a runner: what differs between runners reaches the stages as
values (`pipeline.runners.RunnerProfile` decides them). Importing any of it changes
nothing outside it: coders are registered by the steps that use them, as they are
added to a graph.
"""
