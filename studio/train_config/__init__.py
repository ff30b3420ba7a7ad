"""Training configs, one module per job kind, importable by the studio core and by ``training`` alike.

    cls = config_class("distill")                       # DistillConfig
    cfg = cls.load("configs/distill-demo-ssd.toml")     # validated; ValueError names the field

A job kind ``<kind>`` is run as ``python -m training.<kind> --config <file>``. Adding a kind is one module here (its
TrainConfig subclass), one line in CONFIG_CLASSES, and the trainer module ``training/<kind>.py``.
"""
from __future__ import annotations

from studio.train_config.base import TrainConfig
from studio.train_config.distill import DistillConfig
from studio.train_config.fewstep import FewStepConfig
from studio.train_config.lora import LoraTrainConfig

CONFIG_CLASSES: dict[str, type[TrainConfig]] = {
    "distill": DistillConfig,
    "lora": LoraTrainConfig,
    "fewstep": FewStepConfig,
}


def config_class(kind: str) -> type[TrainConfig]:
    """The config dataclass of a job kind; ValueError naming the known kinds."""
    if kind not in CONFIG_CLASSES:
        raise ValueError(f"unknown job kind {kind!r}; kinds: {', '.join(CONFIG_CLASSES)}")
    return CONFIG_CLASSES[kind]


def cli_module(kind: str) -> str:
    """The module a job of ``kind`` runs (``python -m <module> --config ...``)."""
    config_class(kind)
    return f"training.{kind}"
