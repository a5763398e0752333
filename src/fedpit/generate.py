"""Batched generation: left padding, KV cache, per-sequence stop at EOS, deterministic batch order."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch

from .errors import ConfigError
from .prompts import build_prompt


@torch.no_grad()
def generate(model, tokenizer, prompts: Sequence[str], *, max_new_tokens: int = 256, batch_size: int = 8,
             do_sample: bool = False, temperature: float = 0.7, top_p: float = 0.9,
             repetition_penalty: float = 1.0, seed: int = 0, stop_strings: Sequence[str] | None = None) -> list[str]:
    """Complete each prompt; batches are formed from length-sorted prompts (a fixed order, so reruns agree).

    Each sequence stops at EOS or at any of ``stop_strings`` (which are cut from the returned text), independently of
    the rest of its batch.
    """
    device = next(model.parameters()).device
    old_side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    out: list[str] = [""] * len(prompts)
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    try:
        model.eval()
        for s in range(0, len(order), batch_size):
            idx = order[s:s + batch_size]
            enc = tokenizer([prompts[i] for i in idx], return_tensors="pt", padding=True).to(device)
            if do_sample:
                torch.manual_seed(seed + s)
            kwargs = dict(max_new_tokens=max_new_tokens, do_sample=do_sample, repetition_penalty=repetition_penalty,
                          pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)
            if stop_strings:
                kwargs.update(stop_strings=list(stop_strings), tokenizer=tokenizer)
            if do_sample:
                kwargs.update(temperature=temperature, top_p=top_p)
            else:  # silence sampling defaults a model's generation_config may carry
                kwargs.update(temperature=None, top_p=None, top_k=None)
            gen = model.generate(**enc, **kwargs)
            new = gen[:, enc["input_ids"].shape[1]:]
            for j, i in enumerate(idx):
                text = tokenizer.decode(new[j], skip_special_tokens=True)
                for stop in stop_strings or ():
                    text = text.split(stop)[0]
                out[i] = text.strip()
    finally:
        tokenizer.padding_side = old_side
    return out


def load_for_inference(adapter: str | Path | None, *, model: str | None = None, dtype: str = "auto",
                       device: str = "auto", cache_dir: str | None = None):
    """Backbone (+ a trained adapter folder written by fedpit or peft). Returns (model, tokenizer, template)."""
    from .backbone import DEFAULT_MODEL, load_backbone
    from .rundir import read_json

    template = "alpaca"
    name = model
    if adapter is not None:
        folder = Path(adapter)
        if not (folder / "adapter_model.safetensors").is_file() or not (folder / "adapter_config.json").is_file():
            raise ConfigError(f"{folder}: not an adapter folder (needs adapter_model.safetensors and adapter_config.json)")
        meta = read_json(folder / "fedpit.json") if (folder / "fedpit.json").is_file() else {}
        template = meta.get("template", template)
        name = name or meta.get("model") or read_json(folder / "adapter_config.json").get("base_model_name_or_path")
    bb = load_backbone(name or DEFAULT_MODEL, dtype=dtype, device=device, cache_dir=cache_dir)
    m = bb.model
    if adapter is not None:
        from peft import PeftModel

        m = PeftModel.from_pretrained(m, str(adapter))
        m.eval()
    return m, bb.tokenizer, template


def answer(model, tokenizer, instruction: str, input: str = "", *, template: str = "alpaca", **kw) -> str:
    prompt = build_prompt(instruction, input, template=template, tokenizer=tokenizer)
    return generate(model, tokenizer, [prompt], **kw)[0]
