"""Target oracle: source-only's supervised training, on the target's own train labels (the papers' upper
bound; on MiniCity the gap the methods must close). Uses target labels by design — never an adaptation."""

from __future__ import annotations

from dataclasses import dataclass

from methods import source_only
from methods.base import Method, param


@dataclass
class Config(source_only.Config):
    train_domain: str = param("target_train", "harness", "the oracle trains on labelled target images")


stages = source_only.stages


METHOD = Method("oracle", Config, stages)
