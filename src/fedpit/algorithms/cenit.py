"""CenIT: all clients' data pooled and trained centrally (no privacy; the ceiling).

The runner gives this method one virtual client holding the pooled training set. Each round it trains the global
adapter with the whole federation's step budget (``num_clients x train.local_steps``), times
``cenit.budget_multiplier`` (the journal trains its centralized model for 10x the epochs).
"""

from __future__ import annotations

from ..adapters import StateDict
from . import fedit
from .base import ClientReply

NAME = "cenit"
DESCRIPTION = "all data pooled, centralized training (no privacy; the ceiling)"
FEDERATED = True
CENTRALIZED = True


# The update itself is FedIT's (train the global adapter on the examples given); only the data and budget differ.
client_update = fedit.client_update


def server_aggregate(global_adapter: StateDict, replies: list[ClientReply]) -> StateDict:
    return replies[0].adapter
