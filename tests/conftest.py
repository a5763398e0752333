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
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from fedpit.backbone import load_tokenizer

    tok = load_tokenizer(smollm2_path)
    cfg = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        tie_word_embeddings=True,
        max_position_embeddings=1024,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    torch.manual_seed(0)
    model = LlamaForCausalLM(cfg)
    path = tmp_path_factory.mktemp("tiny-llama")
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return str(path)


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
