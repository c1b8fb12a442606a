"""The pipeline's stages: what dvc.yaml runs and what the `memdistill` CLI subcommands call."""
