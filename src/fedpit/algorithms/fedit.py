"""FedIT (Zhang et al. 2023): FedAvg over LoRA adapters.

Each sampled client trains a copy of the global adapter on its own instruction data and uploads it; the server
averages the uploads weighted by the clients' example counts (LoRA A and B averaged separately).
"""

from __future__ import annotations

from ..adapters import StateDict, weighted_average
from .base import ClientReply, ClientState, RoundContext

NAME = "fedit"
DESCRIPTION = "FedAvg over LoRA adapters trained on each client's own data (Zhang et al. 2023)"


def client_update(engine, global_adapter: StateDict, examples: list, state: ClientState, ctx: RoundContext,
                  on_step=None) -> tuple[ClientReply, ClientState]:
    engine.load_adapter(global_adapter)
    stats = engine.train(examples, on_step=on_step, **ctx.train_kwargs())
    reply = ClientReply(adapter=engine.adapter_state(), num_examples=len(examples), metrics=stats.as_dict())
    return reply, state


def server_aggregate(global_adapter: StateDict, replies: list[ClientReply]) -> StateDict:
    return weighted_average([r.adapter for r in replies], [r.num_examples for r in replies])
