"""`python -m pipeline`: the console command `mparticle-s3-forwarder` (`pipeline.cli`)."""

from pipeline.cli import main

main()
