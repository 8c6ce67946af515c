"""Training, fine-tuning and evaluation (API behind ``sdzoo train/finetune/validate``)."""
from .trainer import TrainConfig, Trainer, TrainingInterrupted, evaluate, lr_at, recipe
from .checkpoint import atomic_save, load_checkpoint, load_state_dict_file, save_safetensors
