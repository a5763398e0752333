"""Shared fixtures: a tiny random LLaMA with the real SmolLM2 tokenizer, built once per session."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

SHARED = Path(__file__).resolve().parents[2] / "shared"


@pytest.fixture(scope="session")
def smollm2_path() -> str:
    """The packaged SmolLM2 converted once into the fedpit cache (the same cache `fedpit run` uses)."""
    from fedpit.backbone import resolve_model_path

    return resolve_model_path("smollm2-135m-instruct")


@pytest.fixture(scope="session")
def tiny_model_path(tmp_path_factory, smollm2_path) -> str:
    """A 2-layer, 64-wide random LLaMA (3M parameters) saved with the SmolLM2 tokenizer."""
    from fedpit.backbone import save_tiny_llama

    return save_tiny_llama(tmp_path_factory.mktemp("tiny-llama"), smollm2_path)


@pytest.fixture(scope="module")
def engine(tiny_model_path):
    """An engine on the tiny model (LoRA r4, dropout 0.05), one per test module."""
    from fedpit.backbone import load_backbone
    from fedpit.config import LoraConfig
    from fedpit.engine import Engine

    bb = load_backbone(tiny_model_path, dtype="fp32")
    return Engine(bb, LoraConfig(r=4, alpha=8, dropout=0.05), max_seq_len=128, seed=0)


@pytest.fixture
def tiny_cfg(tiny_model_path, tmp_path):
    """A config for a fast federated run on the tiny model and a slice of the demo data."""
    from fedpit.config import load_config

    return load_config(
        overrides=[
            "algorithm=fedit",
            f"model.name={tiny_model_path}",
            "model.dtype=fp32",
            "model.max_seq_len=128",
            f"output_dir={tmp_path / 'runs'}",
            "run_name=t",
            "federation.rounds=2",
            "train.local_steps=2",
            "train.batch_size=2",
            "eval.max_examples=8",
            "lora.r=4",
            "lora.alpha=8",
        ]
    )
