"""The forwarder's Beam stages, and beneath them its rules and its I/O clients.

Stages (Beam composites, in the order of the README's diagram): read
(ReadBatches), pubsub (ReadPubSubRecords), parse (ParseBatches), apply_settings
(ApplySettings), batching (StampArrival, BatchPerDevice), write (WriteBatchFiles,
WriteDeadLetters), spill (SpillGroupAndWrite, a sliced run's grouping on disk).
Beside them: values (what flows between them), shuffled (the shuffle's codec),
spill_files (the spill's file format), metrics (counters).
rules/: pure rules (no Beam, no network, no disk). io/: clients of S3, input
files, Pub/Sub and the launcher's progress channel.

Importing any of it changes nothing outside it.
"""
