"""TRL trainer subclasses: SFT (augmentation, QLoRA), GKD (CE + JSD + reverse KL, teacher-free path), GRPO."""

from fastdistill.trainers.gkd import GKDConfig, GKDTrainer
from fastdistill.trainers.grpo import GRPOConfig, GRPOTrainer
from fastdistill.trainers.sft import SFTConfig, SFTTrainer
from fastdistill.trainers.utils import model_init_kwargs

__all__ = ["SFTConfig", "SFTTrainer", "GKDConfig", "GKDTrainer", "GRPOConfig", "GRPOTrainer", "model_init_kwargs"]
