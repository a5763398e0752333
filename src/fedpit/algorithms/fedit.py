"""FedIT (Zhang et al. 2023): FedAvg over LoRA adapters.

Each sampled client trains a copy of the global adapter on its own instruction data and uploads it; the server
averages the uploads weighted by the clients' example counts (LoRA A and B averaged separately).
"""

from __future__ import annotations

from ..adapters import StateDict
from .base import ClientReply, ClientResult, ClientState, Method, RoundContext, fedavg, register


def client_update(
    engine, global_adapter: StateDict, examples: list, state: ClientState, ctx: RoundContext, on_step=None
) -> ClientResult:
    engine.load_adapter(global_adapter)
    stats = engine.train(examples, on_step=on_step, **ctx.train_kwargs())
    return ClientResult(ClientReply(engine.adapter_state(), len(examples), stats.as_dict()), state)


METHOD = register(
    Method(
        name="fedit",
        description="FedAvg over LoRA adapters trained on each client's own data (Zhang et al. 2023)",
        client_update=client_update,
        server_aggregate=fedavg,
    )
)
