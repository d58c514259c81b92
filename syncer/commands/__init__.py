"""CLI command groups; each module holds its commands in its own Typer `app`, which `syncer.cli`
merges into the main one (commands never import the CLI module)."""
