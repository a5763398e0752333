"""LocIT+SA (the seed article's local baseline): each client alone, with self-generation from its *own* model.

Without federation the client's local model writes its synthetic data, then is trained on local + synthetic data.
"""

from __future__ import annotations

from ..adapters import StateDict
from ..selfgen import assess_and_select, ifs_terms, self_generate
from .base import (
    ClientReply,
    ClientResult,
    ClientState,
    Method,
    RoundContext,
    join_state,
    keep_global,
    register,
    split_state,
)


def client_update(
    engine, global_adapter: StateDict, examples: list, state: ClientState, ctx: RoundContext, on_step=None
) -> ClientResult:
    engine.load_adapter(split_state(state) or global_adapter)
    synthetic, report = self_generate(
        engine.model, engine.tokenizer, examples, ctx.cfg.selfgen, seed=ctx.seed, template=engine.template
    )
    ifs = ifs_terms(engine, synthetic) if synthetic and ctx.cfg.selfgen.measure else None  # its own adapter
    synthetic = assess_and_select(synthetic, examples, ctx.cfg.selfgen, report, ifs=ifs)  # measured, all kept
    stats = engine.train(examples + synthetic, on_step=on_step, **ctx.train_kwargs())
    metrics = {
        **stats.as_dict(),
        "synthetic": len(synthetic),
        "candidates": len(synthetic),
        "kept": len(synthetic),
        "selfgen": report.as_dict(),
    }
    return ClientResult(
        ClientReply({}, len(examples), metrics),
        join_state(engine.adapter_state()),
        {"synthetic": synthetic, "selfgen": report.as_dict(rows=True)},
    )


METHOD = register(
    Method(
        name="locit-sa",
        description="each client alone, augmented with data its own local model self-generates",
        client_update=client_update,
        server_aggregate=keep_global,
        shares_adapter=False,
        personalizes=True,
    )
)
