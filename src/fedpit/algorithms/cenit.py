"""CenIT: all clients' data pooled and trained centrally (no privacy; the ceiling).

This method supplies its own client set and budget: one virtual client (id 0) holding the pooled training set, which
each round trains the global adapter with the whole federation's step budget (``num_clients x train.local_steps``),
times ``cenit.budget_multiplier`` (the journal trains its centralized model for 10x the epochs).
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

from ..adapters import StateDict
from ..config import Config
from . import fedit
from .base import ClientReply, Method, register

if TYPE_CHECKING:
    from ..data import Example
    from ..partition import Partition


def server_aggregate(global_adapter: StateDict, replies: list[ClientReply]) -> StateDict:
    return replies[0].adapter


class Pooled(Method):
    """A method whose single client holds every client's data (nothing to deploy: it is a reference)."""

    def clients(self, cfg: Config, r: int) -> list[int]:
        return [0]

    def round_config(self, cfg: Config) -> Config:
        """The whole federation's budget per round (times ``cenit.budget_multiplier``)."""
        t, times = cfg.train, cfg.cenit.budget_multiplier
        if t.local_steps > 0:
            t = dataclasses.replace(t, local_steps=t.local_steps * cfg.partition.num_clients * times)
        else:
            t = dataclasses.replace(t, local_epochs=t.local_epochs * times)
        return dataclasses.replace(cfg, train=t)

    def examples(self, train: list[Example], partition: Partition, k: int) -> list[Example]:
        return list(train)


# The update itself is FedIT's (train the global adapter on the examples given); only the data and budget differ.
METHOD = register(
    Pooled(
        name="cenit",
        description="all data pooled, centralized training (no privacy; the ceiling)",
        client_update=fedit.client_update,
        server_aggregate=server_aggregate,
        pools_data=True,
    )
)
