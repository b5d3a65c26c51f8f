"""r1v.train: the training core every stage reuses (config, optimiser, loop, checkpoints, metrics)."""

from r1v.train.config import TrainConfig
from r1v.train.loop import LossOutput, Objective, TrainResult, sft_loss, sft_objective, train, train_step
from r1v.train.state import TrainState, latest_checkpoint, load_checkpoint, save_checkpoint

__all__ = [
    "LossOutput", "Objective", "TrainConfig", "TrainResult", "TrainState", "latest_checkpoint", "load_checkpoint",
    "save_checkpoint", "sft_loss", "sft_objective", "train", "train_step",
]
