"""The clients of the world outside: S3 (s3, stores, retries), input files (inputs),
Pub/Sub (pubsub_source) and the launcher's progress channel (progress)."""
