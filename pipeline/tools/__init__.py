"""Demo and operator tools, off the forwarding path: sample_data, publish_sample,
show_output, local_services (the embedded S3 and Pub/Sub servers), athena, iam."""
