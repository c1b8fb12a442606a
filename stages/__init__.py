"""The pipeline's stages: what dvc.yaml runs and what the `memdistill` CLI subcommands call."""

from memdistill.core.params import StageParams


def stage_configs() -> list[type[StageParams]]:
    """Every stage's parameter model, in pipeline order, then push's (imported on use: generate pulls in the teachers)."""
    from memdistill.publish.push import PushConfig
    from stages.convert import ConvertConfig
    from stages.gain import GainConfig
    from stages.generate import GenerateConfig
    from stages.snapshots import SnapshotsConfig
    from stages.stats import StatsConfig

    return [SnapshotsConfig, GenerateConfig, GainConfig, ConvertConfig, StatsConfig, PushConfig]
