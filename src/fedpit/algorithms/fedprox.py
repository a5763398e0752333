"""FedProx (Li et al. 2020): FedIT with a proximal term mu/2 ||w - w_global||^2 on the LoRA weights."""

from __future__ import annotations

from ..adapters import StateDict
from .base import ClientReply, ClientResult, ClientState, Method, RoundContext, fedavg, register


def client_update(
    engine, global_adapter: StateDict, examples: list, state: ClientState, ctx: RoundContext, on_step=None
) -> ClientResult:
    engine.load_adapter(global_adapter)
    prox = engine.proximal_term(global_adapter, ctx.cfg.fedprox.mu)
    stats = engine.train(examples, on_step=on_step, extra_loss=prox, **ctx.train_kwargs())
    return ClientResult(ClientReply(engine.adapter_state(), len(examples), stats.as_dict()), state)


METHOD = register(
    Method(
        name="fedprox",
        description="FedIT plus a proximal term mu/2 ||w - w_global||^2 that keeps local adapters near the global one",
        client_update=client_update,
        server_aggregate=fedavg,
    )
)
