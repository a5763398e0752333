"""FewFedWeight (Dong et al. 2022), as adapted in the PPFedIT journal: an **approximation**.

The published method's exact formulas were not available (only its abstract); this follows its description:
1. the global model writes pseudo responses for (a sample of) the client's own instructions; it creates no new
   instructions;
2. each pseudo sample is weighted by its normalized energy score: E = -T logsumexp(logits / T), averaged over
   response tokens under the global model; energies are z-scored within the client and w = n * softmax(-z), so
   confident (low-energy) pseudo samples count more and the weights average 1;
3. the client trains a copy of the global adapter on its real data (weight 1) plus the weighted pseudo samples;
4. the server adapts client aggregation weights to performance: p_k proportional to n_k * exp(-L_k), where L_k is the
   client's loss on its own real data after training (an in-sample validation loss: few-shot clients have no data
   to spare for a held-out split).
"""

from __future__ import annotations

import math

import numpy as np

from ..adapters import StateDict, weighted_average
from ..data import Example
from ..generate import generate
from ..prompts import build_prompt
from ..selfgen import clean_response
from .base import ClientReply, ClientResult, ClientState, Method, RoundContext, register


def energy_weights(energies: list[float]) -> list[float]:
    """n * softmax(-z(E)): mean 1, lower energy gets more weight; equal energies give all ones."""
    e = np.asarray(energies, dtype=np.float64)
    if e.size == 0:
        return []
    z = (e - e.mean()) / (e.std() if e.std() > 0 else 1.0)
    w = np.exp(-z - np.max(-z))
    return (w / w.sum() * e.size).tolist()


def client_update(
    engine, global_adapter: StateDict, examples: list, state: ClientState, ctx: RoundContext, on_step=None
) -> ClientResult:
    p, s = ctx.cfg.fewfedweight, ctx.cfg.selfgen
    engine.load_adapter(global_adapter)
    rng = np.random.default_rng(ctx.seed)
    picked = [
        examples[i] for i in sorted(rng.choice(len(examples), min(p.pseudo_samples, len(examples)), replace=False))
    ]
    prompts = [
        build_prompt(ex.instruction, ex.input, template=engine.template, tokenizer=engine.tokenizer) for ex in picked
    ]
    answers = generate(
        engine.model,
        engine.tokenizer,
        prompts,
        max_new_tokens=s.max_response_tokens,
        batch_size=s.batch_size,
        repetition_penalty=s.repetition_penalty,
        stop_strings=["###"],
    )
    pseudo = [
        Example(ex.instruction, clean_response(a), ex.input, category="pseudo")
        for ex, a in zip(picked, answers)
        if clean_response(a)
    ]
    energies = engine.energies(engine.encode(pseudo), p.energy_temperature) if pseudo else []
    weights = energy_weights(energies)

    engine.load_adapter(global_adapter)
    stats = engine.train(
        examples + pseudo, weights=[1.0] * len(examples) + weights, on_step=on_step, **ctx.train_kwargs()
    )
    val_loss = engine.mean_loss(engine.encode(examples))
    metrics = {
        **stats.as_dict(),
        "pseudo": len(pseudo),
        "val_loss": val_loss,
        "energy_mean": float(np.mean(energies)) if energies else None,
    }
    return ClientResult(
        ClientReply(engine.adapter_state(), len(examples), metrics),
        state,
        {
            "synthetic": [ex for ex in pseudo],
            "pseudo_weights": [
                {"instruction": ex.instruction, "energy": e, "weight": w} for ex, e, w in zip(pseudo, energies, weights)
            ],
        },
    )


def aggregation_weights(replies: list[ClientReply]) -> list[float]:
    losses = [r.metrics.get("val_loss") for r in replies]
    if any(v is None or not math.isfinite(v) for v in losses):
        return [float(r.num_examples) for r in replies]
    best = min(losses)
    return [r.num_examples * math.exp(-(v - best)) for r, v in zip(replies, losses)]


def server_aggregate(global_adapter: StateDict, replies: list[ClientReply]) -> StateDict:
    return weighted_average([r.adapter for r in replies], aggregation_weights(replies))


METHOD = register(
    Method(
        name="fewfedweight",
        description="pseudo responses from the global model, energy-weighted; "
        "aggregation weights from client loss (approx.)",
        client_update=client_update,
        server_aggregate=server_aggregate,
    )
)
