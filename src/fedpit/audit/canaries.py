"""Canaries (Carlini et al. 2019, "The Secret Sharer"): making them, and their exposure under a model.

A canary is a clinical-looking instruction/response pair with its own prefix (a patient, a ward, a kind of record)
and its own random secret of ``privacy.canary_digits`` digits at the very end of the response. ``privacy.canaries``
of them go into the clients' training data, ``privacy.canary_repeats`` copies each, canary ``i`` into client
``i mod num_clients`` (see :mod:`fedpit.audit.data`); nothing else in fedpit knows they are there.

**Exposure** of a canary under a model: ``log2 |S| - log2 rank``, where ``S`` is the space of all ``10^digits``
secrets and ``rank`` (1 = first) is the true secret's place among *all* of them, ordered by the model's loss on the
secret's digits after the canary's prefix. A model that never saw the secret ranks it uniformly at random, so its
exposure averages ``log2(e) = 1.44`` bits; a model that memorized it ranks it first: ``log2 |S|`` bits.

The whole space is scored exactly, with a digit trie: SmolLM2's tokenizer gives every digit its own token, so the
loss of a secret is the sum of one log-probability per digit. The prefix runs once (its KV cache is kept); each
trie node then costs one single-token forward pass (batched), with the digits' KV cache of the level above reused,
so scoring all 10^5 secrets costs ~11,111 token forwards instead of 10^5 full sequences. A tokenizer that does not
split digits one per token is refused with a one-line error (no sampled estimate is made).
"""

from __future__ import annotations

import inspect
import math
from dataclasses import dataclass

import numpy as np
import torch

from ..data import Example
from ..errors import ConfigError
from ..prompts import build_prompt, encode_example

CANARY_TAG = 0xCA7A  # seeds the canaries apart from every other use of cfg.seed

FIRST = (
    "Amara Bogdan Chiara Dmitri Elif Farouk Greta Hiroshi Ines Jonas Kalinda Lorcan Mireille Nikhil Oksana Pavel "
    "Quentin Rosalind Sunniva Tomasz"
).split()
LAST = (
    "Abernathy Brankovic Castellano Drummond Eriksen Fairweather Gallagher Halvorsen Ibarra Jankowski Kowalczyk "
    "Lindqvist Moreau Nakamura Okonkwo Petrakis Quiroga Rasmussen Szabo Thorne"
).split()
WARDS = (
    "cardiology oncology nephrology pediatrics geriatrics neurology hepatology pulmonology hematology endocrinology"
).split()
KINDS = (
    "medical record number",
    "lab accession number",
    "insurance member number",
    "pharmacy dispensing code",
    "pathology specimen number",
)
CAPACITY = len(FIRST) * len(LAST) * len(WARDS) * len(KINDS)  # distinct prefixes the generator can make


@dataclass(frozen=True)
class Canary:
    """One canary: the example inserted into client ``client``'s data, whose response ends with ``secret``."""

    index: int
    client: int
    secret: str  # ``digits`` decimal digits, leading zeros allowed
    instruction: str
    lead: str  # the response up to the secret ("..., is ")

    @property
    def example(self) -> Example:
        return Example(instruction=self.instruction, output=self.lead + self.secret)

    @property
    def patient(self) -> str:
        return self.instruction.split(" of ", 1)[1].split(" in the ", 1)[0]

    def to_dict(self) -> dict:
        return {
            "index": self.index,
            "client": self.client,
            "secret": self.secret,
            "instruction": self.instruction,
            "lead": self.lead,
        }

    @classmethod
    def from_dict(cls, d: dict) -> Canary:
        return cls(int(d["index"]), int(d["client"]), str(d["secret"]), str(d["instruction"]), str(d["lead"]))


def make_canaries(count: int, digits: int, num_clients: int, seed: int) -> list[Canary]:
    """``count`` canaries with distinct prefixes and distinct secrets, seeded; canary i belongs to client
    i mod num_clients. A one-line error when there is no room for them (more than the prefixes or secrets)."""
    if count <= 0:
        return []
    if count > CAPACITY:
        raise ConfigError(f"privacy.canaries: at most {CAPACITY} canaries have distinct prefixes, {count} asked for")
    if count > 10**digits:
        raise ConfigError(
            f"privacy.canaries: {count} canaries need {count} distinct secrets, but privacy.canary_digits = {digits} "
            f"gives only {10**digits}"
        )
    rng = np.random.default_rng([seed, CANARY_TAG])
    combos = rng.choice(CAPACITY, size=count, replace=False)
    secrets = rng.choice(10**digits, size=count, replace=False)
    out = []
    for i, (c, s) in enumerate(zip(combos.tolist(), secrets.tolist())):
        c, kind = divmod(c, len(KINDS))
        c, ward = divmod(c, len(WARDS))
        first, last = divmod(c, len(LAST))
        who, kind, ward = f"{FIRST[first]} {LAST[last]}", KINDS[kind], WARDS[ward]
        out.append(
            Canary(
                index=i,
                client=i % num_clients,
                secret=str(s).zfill(digits),
                instruction=f"Look up the {kind} of {who} in the {ward} ward register.",
                lead=f"According to the {ward} ward register, the {kind} of {who} is ",
            )
        )
    return out


# ---------------------------------------------------------------------------------------------------------- tokens
def digit_token_ids(tokenizer) -> list[int]:
    """The token id of each digit 0-9; a one-line error unless each digit is exactly one token."""
    ids = [tokenizer(str(d), add_special_tokens=False).input_ids for d in range(10)]
    if any(len(t) != 1 for t in ids) or len({t[0] for t in ids}) != 10:
        raise ConfigError(_NOT_DIGITS.format(name=_name(tokenizer), why="a digit alone is not one token"))
    return [t[0] for t in ids]


_NOT_DIGITS = (
    "model.name: the tokenizer of {name} does not give each digit its own token ({why}); canary exposure scores the "
    "whole secret space with a digit trie and needs one token per digit (SmolLM2's tokenizer has it): set "
    "privacy.canaries = 0 for this model"
)


def _name(tokenizer) -> str:
    return getattr(tokenizer, "name_or_path", "") or type(tokenizer).__name__


def prefix_ids(tokenizer, canary: Canary, digit_ids: list[int], *, template: str, max_len: int) -> list[int]:
    """The token ids the model sees before the secret's first digit, exactly as the canary was trained on: checked
    against the training encoding of the true secret and of secrets made of each digit, so the trie scores the same
    tokens training saw. One-line errors when the digits do not tokenize one per token in context, or when the
    canary does not fit in ``model.max_seq_len``."""
    prompt = build_prompt(canary.instruction, template=template, tokenizer=tokenizer)
    p_ids = tokenizer(prompt, add_special_tokens=True).input_ids
    lead = tokenizer(canary.lead, add_special_tokens=False).input_ids
    n = len(canary.secret)
    for secret in {canary.secret, *(str(d) * n for d in range(10))}:
        got = tokenizer(canary.lead + secret, add_special_tokens=False).input_ids
        if got != lead + [digit_ids[int(c)] for c in secret]:
            raise ConfigError(
                _NOT_DIGITS.format(name=_name(tokenizer), why=f"'...{canary.lead[-8:]}{secret}' tokenizes otherwise")
            )
    enc = encode_example(tokenizer, canary.example, template=template, max_len=max_len)
    if enc is None or enc.full_length:
        need = len(p_ids) + len(lead) + n + 1
        raise ConfigError(f"model.max_seq_len: a canary needs {need} tokens, more than {max_len}; raise it")
    ids = list(p_ids) + lead
    if list(enc.input_ids[: len(ids) + n]) != ids + [digit_ids[int(c)] for c in canary.secret]:
        raise ConfigError(_NOT_DIGITS.format(name=_name(tokenizer), why="the training encoding differs"))
    return ids


# ---------------------------------------------------------------------------------------------------------- trie
def _cache_kw(model) -> str:
    """The forward argument that takes a KV cache (transformers 5 renamed ``past_key_values`` to ``cache``)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    params = inspect.signature(base.forward).parameters
    return "cache" if "cache" in params else "past_key_values"


def _digit_logprobs(model, ids: torch.Tensor, cache, kw: str, digits: torch.Tensor) -> torch.Tensor:
    """Log-probabilities of the ten digits after each row of ``ids`` (given ``cache``), shape (rows, 10)."""
    logits = model(input_ids=ids, use_cache=True, logits_to_keep=1, **{kw: cache}).logits[:, -1].float()
    return torch.log_softmax(logits, dim=-1)[:, digits]


@torch.no_grad()
def secret_logprobs(model, prefix: list[int], digit_ids: list[int], digits: int, batch_size: int = 128) -> np.ndarray:
    """Log-probability of every ``digits``-digit secret after ``prefix`` under ``model`` (as loaded): an array of
    ``10^digits`` values, entry ``v`` for the secret ``str(v).zfill(digits)``.

    Level by level through the digit trie: the prefix's KV cache is computed once; a node at depth L (its first L
    digits) costs one forward pass of its last digit on top of the prefix's and its parent's cached keys and values,
    and yields the log-probabilities of the ten digits after it. Only the digits' part of the cache is kept between
    levels (never for the last level), so memory stays at 10^(digits-2) nodes' worth of digit KV plus one batch."""
    from transformers import DynamicCache

    model.eval()
    dev = next(model.parameters()).device
    dig = torch.tensor(digit_ids, device=dev)
    kw = _cache_kw(model)
    cache = DynamicCache()
    scores = _digit_logprobs(model, torch.tensor([prefix], device=dev), cache, kw, dig)[0].double().cpu()
    pre = [(layer.keys, layer.values) for layer in cache.layers]
    width = len(prefix)
    kept = None  # per layer: the digits' (keys, values) of every node at the level above, (nodes, heads, L-1, dim)
    for depth in range(1, digits):
        n, keep = 10**depth, depth < digits - 1
        nxt = torch.empty(n * 10, dtype=torch.float64)
        store = [] if keep else None
        for s in range(0, n, batch_size):
            idx = torch.arange(s, min(n, s + batch_size))
            layers = []
            for li, (k, v) in enumerate(pre):
                k, v = k.expand(len(idx), -1, -1, -1), v.expand(len(idx), -1, -1, -1)
                if kept is not None:
                    pk, pv = kept[li]
                    k, v = torch.cat([k, pk[idx // 10]], dim=2), torch.cat([v, pv[idx // 10]], dim=2)
                layers.append((k, v))
            c = DynamicCache(ddp_cache_data=layers)
            lp = _digit_logprobs(model, dig[idx % 10][:, None], c, kw, dig).double().cpu()
            nxt[s * 10 : (s + len(idx)) * 10] = (scores[idx][:, None] + lp).reshape(-1)
            if keep:
                store.append([(layer.keys[:, :, width:], layer.values[:, :, width:]) for layer in c.layers])
        scores = nxt
        if keep:
            kept = [
                (torch.cat([b[li][0] for b in store]), torch.cat([b[li][1] for b in store])) for li in range(len(pre))
            ]
    return scores.numpy()


def exposure(logprobs: np.ndarray, secret: str) -> float:
    """``log2 |space| - log2 rank`` of ``secret`` among all secrets, ranked by ``logprobs`` (rank 1: the most likely;
    a secret tied with the true one is counted ahead of it, so ties never raise the exposure)."""
    true = logprobs[int(secret)]
    rank = int(np.sum(logprobs >= true))  # itself included
    return math.log2(len(logprobs)) - math.log2(rank)


__all__ = ["CAPACITY", "Canary", "digit_token_ids", "exposure", "make_canaries", "prefix_ids", "secret_logprobs"]
