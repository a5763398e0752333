"""FedPIT v1 (the seed article; arXiv 2403.06131 v1): self-generation + parameter-isolated training.

Each round, per client:
1. the shared global model writes synthetic examples from the client's own demonstrations (``fedpit.selfgen``);
2. a copy of the global adapter is trained on the synthetic data **only**: this is the upload, so the shared model
   never sees a private example;
3. the client's private local adapter (created from the first global adapter it receives, kept across rounds) is
   trained on local + synthetic data ("augmented local data") and never leaves the client.

The server averages the uploads weighted by real example counts. Two models come out: the shared global adapter and
each client's personalized adapter (backbone + local adapter).

Selection (``fedpit.select_by``, the journal's step 3 applied to v1): ``off`` (default) has no selection step:
``selfgen.num_instructions`` examples, all kept. ``ifs``, ``relevance`` or ``first`` generate ``fedpit.candidates`` and
keep ``fedpit.keep`` (the lowest IFS, the highest relevance, or the first in generation order); IFS is computed by the
client's private adapter as it stands at the start of the round (round 1: the received global adapter, from which the
private adapter is created).
``fedpit.shared_budget=parity`` trains the shared adapter for the local step budget (FedIT's) instead of
``fedpit.synthetic_epochs`` passes.

Personalization (``fedpit.personal``): ``independent`` (default, v1) as above: the private adapter is a model of its
own, backbone + private, and never sees a later shared adapter. ``stacked`` (as FedDPA): the private adapter is
trained on top of the shared adapter received this round, frozen (two LoRA adapters stacked with peft's multi-adapter
support), so the personalized model is backbone + shared + private. It starts as the untrained initial adapter (LoRA
B = 0: the stack starts as the shared model), keeps training across rounds on each new shared adapter, and the client
state records the shared adapter it sits on. IFS (selection, measures) is then scored by the stack. The upload is
computed the same way in both modes (step 2 never involves the private adapter).
"""

from __future__ import annotations

from ..adapters import StateDict
from ..selfgen import assess_and_select, ifs_terms, selection_size, self_generate
from .base import (
    ClientReply,
    ClientResult,
    ClientState,
    Method,
    RoundContext,
    fedavg,
    join_state,
    register,
    split_state,
    train_stats,
)


def client_update(
    engine, global_adapter: StateDict, examples: list, state: ClientState, ctx: RoundContext, on_step=None
) -> ClientResult:
    p, s = ctx.cfg.fedpit, ctx.cfg.selfgen
    select_by = p.select_by
    num, keep = selection_size(select_by, s, p)
    engine.load_adapter(global_adapter)  # generation uses the shared model, never a private adapter
    candidates, report = self_generate(
        engine.model,
        engine.tokenizer,
        examples,
        s,
        seed=ctx.seed,
        template=engine.template,
        num=num,
    )
    stack = global_adapter if p.personal == "stacked" else None  # the frozen shared adapter under the private one
    private_start = split_state(state) or (global_adapter if stack is None else engine.initial_adapter)
    ifs = None
    if candidates and (s.measure or select_by == "ifs"):
        engine.load_adapter(private_start)  # the private adapter scores; nothing it computes is uploaded but the choice
        with engine.stacked(stack):
            ifs = ifs_terms(engine, candidates)
    synthetic = assess_and_select(candidates, examples, s, report, select_by=select_by, keep=keep, ifs=ifs)

    engine.load_adapter(global_adapter)
    shared = engine.train(synthetic, on_step=on_step, **ctx.train_kwargs(synthetic=True, local_examples=len(examples)))
    upload = engine.adapter_state()

    engine.load_adapter(private_start)
    with engine.stacked(stack):
        local = engine.train(examples + synthetic, on_step=on_step, **ctx.train_kwargs(seed_offset=1))
    new_state = join_state(engine.adapter_state(), stack)

    metrics = {
        **shared.as_dict(),
        **train_stats("local_", local),
        "synthetic": len(synthetic),
        "candidates": len(candidates),
        "kept": len(synthetic),
        "selfgen": report.as_dict(),
    }
    return ClientResult(
        ClientReply(upload, len(examples), metrics),
        new_state,
        {"synthetic": synthetic, "selfgen": report.as_dict(rows=True)},
    )


METHOD = register(
    Method(
        name="fedpit",
        description="shared adapter trained on self-generated data only; "
        "private local adapter on local + synthetic data",
        client_update=client_update,
        server_aggregate=fedavg,
    )
)
