"""Batched generation: left padding, KV cache, per-sequence stop at EOS, deterministic batch order, LoRA folded into
the base weights while decoding."""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator, Sequence
from pathlib import Path

import torch

from .adapter_folder import SHARED, AdapterFolder, read_adapter_folder
from .prompts import build_prompt


@contextlib.contextmanager
def lora_merged(model) -> Iterator[None]:
    """Fold a peft model's active LoRA deltas into its base weights for the duration, then restore them bit for bit.

    Decoding calls every layer once per token; unmerged, each LoRA module adds several small kernels per call. The
    base weights are copied (to CPU) before merging and copied back after, because unmerging by subtraction in bf16
    would leave rounding drift in the frozen backbone. Anything that is not a peft model passes through unchanged.
    """
    from peft import PeftModel
    from peft.tuners.lora import LoraLayer

    layers = (
        [m for m in model.modules() if isinstance(m, LoraLayer) and not m.merged]
        if isinstance(model, PeftModel)
        else []
    )
    if not layers or any(m.disable_adapters for m in layers):  # inside model.disable_adapter(): nothing to fold
        yield
        return
    saved = [(m.get_base_layer().weight, m.get_base_layer().weight.detach().to("cpu", copy=True)) for m in layers]
    model.base_model.merge_adapter()
    try:
        yield
    finally:
        model.base_model.unmerge_adapter()
        with torch.no_grad():
            for weight, original in saved:
                weight.copy_(original)


DECODE_ATTENTION = "fedpit_decode"


def decode_attention(module, query, key, value, attention_mask, dropout=0.0, scaling=None, is_causal=None, **kw):
    """Attention for one new token per sequence (a decode step), in HF's attention-function interface; any other
    call (prefill, dropout, soft-capping) goes to HF's SDPA function unchanged.

    On CPU, SDPA's flash kernel spends about 3 ms per layer on a single query against a few hundred cached keys at
    batch 32, several times what reading those keys costs. Here the query heads are grouped onto their key/value head
    (no copy of the cache, as HF's ``pack_gqa``), and the step is two batched matrix products with a float32 softmax.
    """
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    if query.shape[2] != 1 or dropout or kw.get("softcap") is not None or kw.get("position_bias") is not None:
        return sdpa_attention_forward(
            module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, is_causal=is_causal, **kw
        )
    b, heads, _, d = query.shape
    kv_heads = key.shape[1]
    scores = torch.matmul(query.reshape(b, kv_heads, heads // kv_heads, d), key.transpose(-1, -2)).float()
    scores.mul_(scaling if scaling is not None else d**-0.5)
    if attention_mask is not None:  # [b, 1, 1, S]: True (or 0.0) where a key may be attended
        if attention_mask.dtype == torch.bool:
            scores.masked_fill_(~attention_mask, float("-inf"))
        else:
            scores.add_(attention_mask)
    probs = scores.softmax(-1).to(value.dtype)
    return torch.matmul(probs, value).reshape(b, 1, heads, d), None


@functools.cache
def _register_decode_attention() -> None:
    """Once per process: HF's attention and mask interfaces learn :data:`DECODE_ATTENTION`."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    AttentionInterface.register(DECODE_ATTENTION, decode_attention)
    AttentionMaskInterface.register(DECODE_ATTENTION, sdpa_mask)  # the same boolean masks as SDPA


@contextlib.contextmanager
def fast_decoding(model) -> Iterator[dict]:
    """For the duration: a preallocated (static) KV cache and :func:`decode_attention`, on CPU, for models whose
    attention goes through HF's attention interface with SDPA and that support a static cache. Yields the extra
    keyword arguments for HF ``generate`` (empty where the model does not qualify, which then decodes as before).

    HF's default cache concatenates every layer's keys and values on every step (41% of decoding time in a profile
    at batch 8 and ~300-token prompts). Measured end to end (``benchmarks/generation.py``): 1.16x per decode step on
    the self-generation response prompts at batch 32, no gain at batch 8. Outputs are HF's up to bf16 rounding.
    """
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    config = getattr(base, "config", None)
    device = next(model.parameters()).device
    ok = (
        device.type == "cpu"
        and config is not None
        and getattr(config, "_attn_implementation", None) == "sdpa"
        and getattr(base, "_can_compile_fullgraph", False)  # HF's marker for models that take a static cache
    )
    if not ok:
        yield {}
        return
    _register_decode_attention()
    config._attn_implementation = DECODE_ATTENTION
    try:
        yield {"cache_implementation": "static", "disable_compile": True}  # never compile per shape
    finally:
        config._attn_implementation = "sdpa"


_stop_cache: dict = {}


def stop_criteria(tokenizer, stop_strings: Sequence[str]):
    """HF's ``StopStringCriteria`` for these strings, built once per tokenizer (building it costs ~0.2 s: it walks
    the whole vocabulary); it keeps no state between ``generate`` calls."""
    from transformers import StopStringCriteria

    key = (id(tokenizer), tuple(stop_strings))
    hit = _stop_cache.get(key)
    if hit is None or hit[0] is not tokenizer:  # an id can be reused by a new tokenizer once the old one is gone
        hit = (tokenizer, StopStringCriteria(tokenizer, list(stop_strings)))
        _stop_cache[key] = hit
    return hit[1]


def _generate_kwargs(tokenizer, max_new_tokens, do_sample, temperature, top_p, repetition_penalty, stop_strings):
    """The keyword arguments of HF ``generate`` for one call of :func:`generate` (the same for every batch)."""
    kwargs = dict(
        max_new_tokens=max_new_tokens,
        do_sample=do_sample,
        repetition_penalty=repetition_penalty,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    if stop_strings:
        from transformers import StoppingCriteriaList

        kwargs.update(stopping_criteria=StoppingCriteriaList([stop_criteria(tokenizer, stop_strings)]))
    if do_sample:
        kwargs.update(temperature=temperature, top_p=top_p)
    else:  # silence sampling defaults a model's generation_config may carry
        kwargs.update(temperature=None, top_p=None, top_k=None)
    return kwargs


@torch.no_grad()
def generate(
    model,
    tokenizer,
    prompts: Sequence[str],
    *,
    max_new_tokens: int = 256,
    batch_size: int = 8,
    do_sample: bool = False,
    temperature: float = 0.7,
    top_p: float = 0.9,
    repetition_penalty: float = 1.0,
    seed: int = 0,
    stop_strings: Sequence[str] | None = None,
    merge_lora: bool = True,
    return_finished: bool = False,
) -> list[str] | tuple[list[str], list[bool]]:
    """Complete each prompt; batches are formed from length-sorted prompts (a fixed order, so reruns agree).

    Each sequence stops at EOS or at any of ``stop_strings`` (which are cut from the returned text), independently of
    the rest of its batch. With ``merge_lora`` a peft model decodes with its adapter folded in (:func:`lora_merged`).
    With ``return_finished`` it also returns, per prompt, whether the text ended by itself (EOS or a stop string)
    rather than being cut off by ``max_new_tokens``.
    """
    device = next(model.parameters()).device
    old_side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    out: list[str] = [""] * len(prompts)
    finished: list[bool] = [True] * len(prompts)
    ends = {t for t in (tokenizer.eos_token_id, tokenizer.pad_token_id) if t is not None}
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    with contextlib.ExitStack() as stack:
        stack.callback(setattr, tokenizer, "padding_side", old_side)
        if merge_lora:
            stack.enter_context(lora_merged(model))
        model.eval()
        kwargs = _generate_kwargs(
            tokenizer, max_new_tokens, do_sample, temperature, top_p, repetition_penalty, stop_strings
        )
        kwargs.update(stack.enter_context(fast_decoding(model)))
        for s in range(0, len(order), batch_size):
            idx = order[s : s + batch_size]
            enc = tokenizer([prompts[i] for i in idx], return_tensors="pt", padding=True).to(device)
            if do_sample:
                torch.manual_seed(seed + s)
            gen = model.generate(**enc, **kwargs)
            new = gen[:, enc["input_ids"].shape[1] :]
            for j, i in enumerate(idx):
                text = tokenizer.decode(new[j], skip_special_tokens=True)
                finished[i] = bool(ends & set(new[j].tolist())) or any(st in text for st in stop_strings or ())
                for stop in stop_strings or ():
                    text = text.split(stop)[0]
                out[i] = text.strip()
    return (out, finished) if return_finished else out


def peft_model(model, af: AdapterFolder):
    """``model`` (a backbone) with the adapter of ``af`` loaded by peft (adapter ``default``); a stacked private
    adapter with the shared one under it (adapter :data:`~fedpit.adapter_folder.SHARED`), both active."""
    from peft import PeftModel

    m = PeftModel.from_pretrained(model, str(af.path))
    if af.shared is not None:
        m.load_adapter(str(af.shared.path), adapter_name=SHARED)
        m.base_model.set_adapter(["default", SHARED])
    return m


def load_for_inference(
    adapter: str | Path | None,
    *,
    model: str | None = None,
    dtype: str = "auto",
    device: str = "auto",
    cache_dir: str | None = None,
):
    """Backbone (+ a trained adapter folder written by fedpit or peft; a stacked private adapter with the shared one
    it sits on). Returns (model, tokenizer, template)."""
    from .backbone import DEFAULT_MODEL, load_backbone

    af = read_adapter_folder(adapter) if adapter is not None else None  # verified; refuses half of a stack
    meta = af.meta if af is not None else {}
    name = model or meta.get("model") or (af.peft_config.get("base_model_name_or_path") if af is not None else None)
    bb = load_backbone(name or DEFAULT_MODEL, dtype=dtype, device=device, cache_dir=cache_dir)
    m = bb.model
    if af is not None:
        m = peft_model(m, af)
        m.eval()
    return m, bb.tokenizer, meta.get("template", "alpaca")


def answer(model, tokenizer, instruction: str, input: str = "", *, template: str = "alpaca", **kw) -> str:
    prompt = build_prompt(instruction, input, template=template, tokenizer=tokenizer)
    return generate(model, tokenizer, [prompt], **kw)[0]
