"""Training-data extraction attack (discoverable memorization) on a model that an attacker can query.

Two variants, both greedy:
- **prompt attack** (the PPFedIT journal's): prompt with a private example's instruction (+ input) in the training
  template and score the continuation against the true response: Rouge-L F and exact match;
- **token-prefix attack** (Carlini et al. 2023 / Nasr et al. 2023): feed the first half of the example's full
  training token sequence and check whether the model reproduces the next ``suffix_tokens`` (50) tokens exactly.
Higher means more leakage. Run it on the shared adapter after every round (``eval.extraction_every_round``) and on
each client's private adapter and the bare backbone at the end, to get leakage-versus-round curves and floors.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

import numpy as np
import torch

from .generate import generate, lora_merged
from .metrics import exact_match, rouge_l
from .prompts import build_prompt, encode_example


@dataclass
class ExtractionResult:
    n: int
    rouge_l: float  # mean Rouge-L F of the prompt attack's continuation vs the true response
    exact: float  # share of prompt-attack continuations that reproduce the response verbatim
    prefix_exact: float  # share of token-prefix attacks that reproduce the next suffix tokens exactly
    per_example: list[dict] = field(default_factory=list)

    def summary(self) -> dict:
        return {k: v for k, v in asdict(self).items() if k != "per_example"}


def sample_targets(examples: Sequence, n: int, seed: int) -> list:
    """``n`` private examples drawn without replacement (all of them when n <= 0 or n >= len)."""
    if n <= 0 or n >= len(examples):
        return list(examples)
    idx = np.random.default_rng(seed).choice(len(examples), size=n, replace=False)
    return [examples[i] for i in sorted(idx)]


class _LeavesSuffix:
    """A stopping criterion for HF's ``StoppingCriteriaList`` (per-row booleans) for the token-prefix attack: a row
    stops as soon as its greedy continuation leaves the suffix it should reproduce, or has reproduced all of it.
    The attack only asks whether the first ``len(suffix)`` tokens equal the suffix, so stopping a row that has left
    it changes no result; most rows leave within a few tokens, so the attack costs a few decode steps instead of
    ``suffix_tokens``."""

    def __init__(self, suffixes: list[list[int]], width: int):
        longest = max(len(s) for s in suffixes)
        self.want = torch.full((len(suffixes), longest), -1, dtype=torch.long)
        for j, suf in enumerate(suffixes):
            self.want[j, : len(suf)] = torch.tensor(suf)
        self.lengths = torch.tensor([len(s) for s in suffixes])
        self.width = width

    def __call__(self, input_ids: torch.Tensor, scores, **kwargs) -> torch.Tensor:
        t = input_ids.shape[1] - self.width  # tokens generated so far (>= 1)
        left = input_ids[:, -1].cpu() != self.want[:, t - 1]
        return (left | (t >= self.lengths)).to(input_ids.device)


@torch.no_grad()
def _greedy_from_ids(
    model, tokenizer, prefixes: list[list[int]], suffixes: list[list[int]], batch_size: int
) -> list[list[int]]:
    """Greedy continuations of token ``prefixes``, each stopped where it leaves its ``suffix`` (or ends it, or the
    model ends the text); the LoRA adapter is folded in while decoding."""
    from transformers import StoppingCriteriaList

    device = next(model.parameters()).device
    pad = tokenizer.pad_token_id
    out: list[list[int]] = [[] for _ in prefixes]
    order = sorted(range(len(prefixes)), key=lambda i: len(prefixes[i]))
    model.eval()
    with lora_merged(model):
        for s in range(0, len(order), batch_size):
            idx = order[s : s + batch_size]
            width = max(len(prefixes[i]) for i in idx)
            ids = torch.full((len(idx), width), pad, dtype=torch.long)
            mask = torch.zeros((len(idx), width), dtype=torch.long)
            for j, i in enumerate(idx):  # left padding
                ids[j, width - len(prefixes[i]) :] = torch.tensor(prefixes[i])
                mask[j, width - len(prefixes[i]) :] = 1
            stop = _LeavesSuffix([suffixes[i] for i in idx], width)
            gen = model.generate(
                input_ids=ids.to(device),
                attention_mask=mask.to(device),
                max_new_tokens=int(stop.lengths.max()),
                do_sample=False,
                temperature=None,
                top_p=None,
                top_k=None,
                pad_token_id=pad,
                stopping_criteria=StoppingCriteriaList([stop]),
            )
            for j, i in enumerate(idx):
                out[i] = gen[j, width:].tolist()
    return out


def extraction_attack(
    model,
    tokenizer,
    targets: Sequence,
    *,
    template: str = "alpaca",
    max_new_tokens: int = 128,
    suffix_tokens: int = 50,
    batch_size: int = 8,
    max_len: int = 512,
) -> ExtractionResult:
    """Attack ``model`` (with whatever adapter is loaded) on each target example; see the module docstring."""
    if not targets:
        return ExtractionResult(0, float("nan"), float("nan"), float("nan"))
    prompts = [build_prompt(t.instruction, t.input, template=template, tokenizer=tokenizer) for t in targets]
    continuations = generate(model, tokenizer, prompts, max_new_tokens=max_new_tokens, batch_size=batch_size)

    prefixes, suffixes = [], []
    for t in targets:
        ids = list(encode_example(tokenizer, t, template=template, max_len=max_len).input_ids)
        half = len(ids) // 2
        prefixes.append(ids[:half])
        suffixes.append(ids[half : half + suffix_tokens])
    produced = _greedy_from_ids(model, tokenizer, prefixes, suffixes, batch_size)

    rows = []
    for t, cont, suf, got in zip(targets, continuations, suffixes, produced):
        rows.append(
            {
                "instruction": t.instruction,
                "continuation": cont,
                "rouge_l": rouge_l(cont, t.output),
                "exact": exact_match(cont, t.output),
                "prefix_exact": got[: len(suf)] == suf,
            }
        )
    return ExtractionResult(
        n=len(rows),
        rouge_l=float(np.mean([r["rouge_l"] for r in rows])),
        exact=float(np.mean([r["exact"] for r in rows])),
        prefix_exact=float(np.mean([r["prefix_exact"] for r in rows])),
        per_example=rows,
    )


def attack_engine(engine, targets: Sequence, max_new_tokens: int, batch_size: int = 8) -> ExtractionResult:
    """:func:`extraction_attack` on a fedpit engine's model as loaded, with its tokenizer, template and length."""
    return extraction_attack(
        engine.model,
        engine.tokenizer,
        targets,
        template=engine.template,
        max_new_tokens=max_new_tokens,
        batch_size=batch_size,
        max_len=engine.max_seq_len,
    )
