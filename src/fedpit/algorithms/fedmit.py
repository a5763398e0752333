"""FedMIT (the journal's privacy baseline): FedIT on local + self-generated data mixed, no parameter isolation.

The shared adapter is trained on private and synthetic examples together, so it can memorize private text; comparing
its extraction risk with FedPIT's shows what isolation buys.
"""

from __future__ import annotations

from ..adapters import StateDict
from ..selfgen import assess_and_select, self_generate
from .base import ClientReply, ClientResult, ClientState, Method, RoundContext, fedavg, register


def client_update(
    engine, global_adapter: StateDict, examples: list, state: ClientState, ctx: RoundContext, on_step=None
) -> ClientResult:
    engine.load_adapter(global_adapter)
    synthetic, report = self_generate(
        engine.model, engine.tokenizer, examples, ctx.cfg.selfgen, seed=ctx.seed, template=engine.template
    )
    synthetic = assess_and_select(synthetic, examples, ctx.cfg.selfgen, report)  # measured, all kept
    engine.load_adapter(global_adapter)
    stats = engine.train(examples + synthetic, on_step=on_step, **ctx.train_kwargs())
    metrics = {
        **stats.as_dict(),
        "synthetic": len(synthetic),
        "candidates": len(synthetic),
        "kept": len(synthetic),
        "selfgen": report.as_dict(),
    }
    return ClientResult(
        ClientReply(engine.adapter_state(), len(examples), metrics),
        state,
        {"synthetic": synthetic, "selfgen": report.as_dict(rows=True)},
    )


METHOD = register(
    Method(
        name="fedmit",
        description="FedIT on local + self-generated data mixed in one adapter (no isolation; privacy baseline)",
        client_update=client_update,
        server_aggregate=fedavg,
    )
)
