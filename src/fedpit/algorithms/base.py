"""What every federated method is made of: a client update and a server aggregate over plain state dicts.

Both are pure with respect to the transport: the in-process runner and a Flower ClientApp/ServerApp call the very
same functions. Anything a client keeps private (a local adapter, synthetic data) lives in its ``ClientState`` and is
never part of a :class:`ClientReply`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

import torch

from ..adapters import StateDict

ClientState = dict[str, torch.Tensor]  # private per-client tensors, persisted by the runner between rounds


@dataclass(frozen=True)
class LocalBudget:
    """How much one client trains per round (identical for every method, so comparisons are fair)."""

    epochs: int = 1
    steps: int = 0
    batch_size: int = 4
    grad_accum: int = 1
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    group_by_length: bool = True


@dataclass(frozen=True)
class RoundContext:
    round: int  # 1-based
    num_rounds: int
    client_id: int
    lr: float  # this round's learning rate (cosine over rounds)
    seed: int  # derived from (run seed, round, client): same inputs, same update
    budget: LocalBudget = field(default_factory=LocalBudget)

    def train_kwargs(self) -> dict:
        b = self.budget
        return dict(lr=self.lr, epochs=b.epochs, steps=b.steps, batch_size=b.batch_size, grad_accum=b.grad_accum,
                    weight_decay=b.weight_decay, max_grad_norm=b.max_grad_norm, seed=self.seed,
                    group_by_length=b.group_by_length)


@dataclass
class ClientReply:
    """Everything a client sends back: the upload and public bookkeeping, nothing private."""

    adapter: StateDict
    num_examples: int  # aggregation weight (real local examples)
    metrics: dict = field(default_factory=dict)


class Method(Protocol):
    NAME: str
    DESCRIPTION: str

    def client_update(self, engine, global_adapter: StateDict, examples: list, state: ClientState,
                      ctx: RoundContext, on_step=None) -> tuple[ClientReply, ClientState]: ...

    def server_aggregate(self, global_adapter: StateDict, replies: list[ClientReply]) -> StateDict: ...
