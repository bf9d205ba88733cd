"""The MPO trainer: config, stages, the loop, checkpoints and run logging."""
from .checkpoint import CheckpointError, latest_checkpoint
from .config import (
    ConfigError,
    JudgeSettings,
    LogSettings,
    LoraSettings,
    MetaSettings,
    ModelConfig,
    MPOConfig,
    PipelineConfig,
    RewardSettings,
    RolloutSettings,
    TaskSettings,
    TrainSettings,
)
from .prompt_stream import StreamExhaustedError
from .reward_funcs import RewardFuncError
from .trainer import JudgeFailureRateError, MPOTrainer, OutputDirInUseError, TrainResult

__all__ = [
    "CheckpointError",
    "ConfigError",
    "JudgeFailureRateError",
    "JudgeSettings",
    "LogSettings",
    "LoraSettings",
    "MPOConfig",
    "MPOTrainer",
    "MetaSettings",
    "ModelConfig",
    "OutputDirInUseError",
    "PipelineConfig",
    "RewardFuncError",
    "RewardSettings",
    "RolloutSettings",
    "StreamExhaustedError",
    "TaskSettings",
    "TrainResult",
    "TrainSettings",
    "latest_checkpoint",
]
