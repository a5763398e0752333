"""LocIT: each client tunes its own adapter on its own data; nothing is shared (the no-federation floor)."""

from __future__ import annotations

from ..adapters import StateDict
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
    stats = engine.train(examples, on_step=on_step, **ctx.train_kwargs())
    return ClientResult(ClientReply({}, len(examples), stats.as_dict()), join_state(engine.adapter_state()))


METHOD = register(
    Method(
        name="locit",
        description="each client alone on its own data; no communication",
        client_update=client_update,
        server_aggregate=keep_global,
        shares_adapter=False,
        personalizes=True,
    )
)
