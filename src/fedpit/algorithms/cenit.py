"""CenIT: all clients' data pooled and trained centrally (no privacy; the ceiling).

The runner gives this method one virtual client holding the pooled training set. Each round it trains the global
adapter with the whole federation's step budget (``num_clients x train.local_steps``), times
``cenit.budget_multiplier`` (the journal trains its centralized model for 10x the epochs).
"""

from __future__ import annotations

from ..adapters import StateDict
from .base import ClientReply, ClientResult, ClientState, RoundContext

NAME = "cenit"
DESCRIPTION = "all data pooled, centralized training (no privacy; the ceiling)"
FEDERATED = True
CENTRALIZED = True


def client_update(engine, global_adapter: StateDict, examples: list, state: ClientState, ctx: RoundContext,
                  on_step=None) -> ClientResult:
    engine.load_adapter(global_adapter)
    stats = engine.train(examples, on_step=on_step, **ctx.train_kwargs())
    return ClientResult(ClientReply(engine.adapter_state(), len(examples), stats.as_dict()), state)


def server_aggregate(global_adapter: StateDict, replies: list[ClientReply]) -> StateDict:
    return replies[0].adapter
