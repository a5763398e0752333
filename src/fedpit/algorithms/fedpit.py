"""FedPIT v1 (the seed article; arXiv 2403.06131 v1): self-generation + parameter-isolated training.

Each round, per client:
1. the shared global model writes synthetic examples from the client's own demonstrations (``fedpit.selfgen``);
2. a copy of the global adapter is trained on the synthetic data **only**: this is the upload, so the shared model
   never sees a private example;
3. the client's private local adapter (created from the first global adapter it receives, kept across rounds) is
   trained on local + synthetic data ("augmented local data") and never leaves the client.

The server averages the uploads weighted by real example counts. Two models come out: the shared global adapter and
each client's personalized adapter (backbone + local adapter).
"""

from __future__ import annotations

from ..adapters import StateDict
from ..selfgen import self_generate
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


def client_update(engine, global_adapter: StateDict, examples: list, state: ClientState, ctx: RoundContext,
                  on_step=None) -> ClientResult:
    engine.load_adapter(global_adapter)  # generation uses the shared model, never a private adapter
    synthetic, report = self_generate(engine.model, engine.tokenizer, examples, ctx.params.selfgen, seed=ctx.seed,
                                      template=engine.template)

    engine.load_adapter(global_adapter)
    shared = engine.train(synthetic, on_step=on_step, **ctx.train_kwargs(synthetic=True))
    upload = engine.adapter_state()

    engine.load_adapter(split_state(state) or global_adapter)
    local = engine.train(examples + synthetic, on_step=on_step, **ctx.train_kwargs(seed_offset=1))
    new_state = join_state(engine.adapter_state())

    metrics = {**shared.as_dict(), **train_stats("local_", local), "synthetic": len(synthetic),
               "selfgen": report.as_dict()}
    return ClientResult(ClientReply(upload, len(examples), metrics), new_state,
                        {"synthetic": synthetic, "selfgen": report.as_dict()})


METHOD = register(Method(
    name="fedpit",
    description="shared adapter trained on self-generated data only; "
                "private local adapter on local + synthetic data",
    client_update=client_update, server_aggregate=fedavg))
