"""The forwarder's DoFns and composite transforms, and the pure rules they call.

Pure rules (no Beam): batch_json, settings, grouping, naming, packing.
Beam: read (ReadBatches), pubsub (ReadPubSubRecords), parse (ParseBatches),
apply_settings (ApplySettings), batching (StampArrival, BatchPerDevice),
write (WriteBatchFiles, WriteDeadLetters).
I/O: s3 (connection, bucket check), stores (write-once objects).
"""
