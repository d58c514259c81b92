"""CLI command groups; each module registers its commands on `syncer.cli.app`."""
