"""spa_train: train and evaluate Swin and SPT backbones on the spa shards.

``train(config)`` runs a training (one process or torchrun/DDP), ``evaluate_checkpoint`` an
evaluation, ``resolve_config`` builds a ``TrainConfig`` from a file and ``key=value`` overrides.
"""
from spa_train.config import TrainConfig, resolve_config
from spa_train.engine import evaluate_checkpoint, train

__all__ = ["TrainConfig", "evaluate_checkpoint", "resolve_config", "train"]
