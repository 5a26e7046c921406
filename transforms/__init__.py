"""The forwarder's DoFns and composite transforms, and the pure rules they call.

Pure rules (no Beam): batch_json, settings, grouping, naming, packing.
Beam: read (ReadBatches), pubsub (ReadPubSubRecords), parse (ParseBatches),
apply_settings (ApplySettings), batching (StampArrival, BatchPerDevice),
write (WriteBatchFiles, WriteDeadLetters).
I/O: s3 (connection, bucket check), stores (write-once objects).
"""

import logging


class _MissingGcpClientsNotice(logging.Filter):
    """Drops the two warnings Beam logs when it is imported without its gcp extra
    (the forwarder needs neither GCS nor BigQuery): they would open every run's output."""

    _NOTICES = ("Failed to import GCSFileSystem", "apitools not found")

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(self._NOTICES)


for _logger in ("", "apache_beam.io.filesystems"):  # root: bigquery's notice uses it
    logging.getLogger(_logger).addFilter(_MissingGcpClientsNotice())
