"""What every federated method is made of: a client update and a server aggregate over plain state dicts.

Both are pure with respect to the transport: the in-process runner and a Flower ClientApp/ServerApp call the very
same functions. Anything a client keeps private (a local adapter, synthetic data) lives in its ``ClientState`` or in
``ClientResult.artifacts`` (written to the client's own disk) and is never part of a :class:`ClientReply`.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

import numpy as np
import torch

from ..adapter_folder import SHARED
from ..adapters import StateDict, load_state, mix, save_state
from ..config import Config, TrainConfig

if TYPE_CHECKING:
    from ..data import Example
    from ..engine import Engine
    from ..partition import Partition

LOCAL_PREFIX = "local."  # key prefix of the private adapter's tensors in a client's state file
SHARED_PREFIX = f"{SHARED}."  # key prefix of the shared adapter a stacked private adapter sits on
ACCOUNTANT_KEY = "accountant.history"  # DP-SGD's privacy history in a client's state file (fedit-dp)
POOL_KEY = "synthetic.pool"  # the accumulated synthetic examples in a client's state file (selfgen.accumulate)


@dataclass
class ClientState:
    """A client's private state, kept on the client between rounds and never sent: its local (personalized) adapter,
    and for a stacked private adapter (``fedpit.personal = "stacked"``) the frozen shared adapter it was trained on
    top of (the personalized model is backbone + ``shared`` + ``local``; empty: backbone + ``local``).

    On disk it is one safetensors file whose keys are the adapter's, prefixed with ``local.`` (and ``shared.``).

    ``accountant``: DP-SGD's privacy history (fedit-dp), Opacus' ``(noise multiplier, sample rate, steps)`` entries
    over every round the client trained, so that a resumed run or a Flower site reports the same epsilon; on disk the
    float64 tensor ``accountant.history`` (one row per entry).

    ``pool``: the synthetic examples kept in earlier rounds (``selfgen.accumulate``), which the shared adapter trains
    on again with each round's new ones; on disk a JSON list in the file's metadata (key ``synthetic.pool``)."""

    local: StateDict = field(default_factory=dict)
    shared: StateDict = field(default_factory=dict)
    accountant: list[tuple[float, float, int]] = field(default_factory=list)
    pool: list[Example] = field(default_factory=list)

    def __bool__(self) -> bool:
        """Something to keep (a private adapter, a privacy history, a synthetic pool); a personalized model only
        where ``local``."""
        return bool(self.local) or bool(self.accountant) or bool(self.pool)

    def save(self, path: str | os.PathLike) -> None:
        tensors = {LOCAL_PREFIX + k: v for k, v in self.local.items()}
        if self.accountant:
            tensors[ACCOUNTANT_KEY] = torch.tensor(self.accountant, dtype=torch.float64).reshape(-1, 3)
        meta = {POOL_KEY: json.dumps([e.to_dict() for e in self.pool])} if self.pool else None
        save_state(tensors | {SHARED_PREFIX + k: v for k, v in self.shared.items()}, path, metadata=meta)

    @classmethod
    def load(cls, path: str | os.PathLike | None) -> ClientState:
        """The state saved at ``path`` (an empty state for None: the client has not trained yet)."""
        if path is None:
            return cls()
        from safetensors import safe_open

        from ..data import Example

        saved = load_state(path)
        part = lambda prefix: {k[len(prefix) :]: v for k, v in saved.items() if k.startswith(prefix)}  # noqa: E731
        history = saved.get(ACCOUNTANT_KEY)
        history = [] if history is None else [(float(s), float(q), int(n)) for s, q, n in history.tolist()]
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
        pool = [Example.from_dict(d) for d in json.loads(meta.get(POOL_KEY, "[]"))]
        return cls(part(LOCAL_PREFIX), part(SHARED_PREFIX), history, pool)


@dataclass(frozen=True)
class RoundContext:
    """What client ``client_id`` needs to know about one round. Every setting is read from ``cfg``, the run's typed
    config as the method trains with it (:meth:`Method.round_config`: CenIT's pooled client gets the federation's
    whole budget), never copied into another structure."""

    round: int  # 1-based
    client_id: int
    lr: float  # this round's learning rate (cosine over rounds)
    seed: int  # derived from (run seed, round, client): same inputs, same update
    cfg: Config = field(default_factory=Config)

    @property
    def num_rounds(self) -> int:
        return self.cfg.federation.rounds

    def train_kwargs(self, *, seed_offset: int = 0, synthetic: bool = False, local_examples: int = 0) -> dict:
        """Arguments for :meth:`Engine.train`. ``synthetic=True``: ``fedpit.synthetic_epochs`` passes instead of
        the local step budget (a synthetic set is small; cycling it for many steps only memorizes it), or with
        ``fedpit.shared_budget="parity"`` exactly the optimizer steps FedIT's local update makes on
        ``local_examples`` real examples (the synthetic set is cycled)."""
        t, p = self.cfg.train, self.cfg.fedpit
        epochs, steps = (p.synthetic_epochs, 0) if synthetic else (t.local_epochs, t.local_steps)
        if synthetic and p.shared_budget == "parity":
            epochs, steps = t.local_epochs, t.local_steps or parity_steps(t, local_examples)
        return dict(
            lr=self.lr,
            epochs=epochs,
            steps=steps,
            batch_size=t.batch_size,
            grad_accum=t.grad_accum,
            weight_decay=t.weight_decay,
            max_grad_norm=t.max_grad_norm,
            seed=self.seed + seed_offset,
            group_by_length=t.group_by_length,
        )


def parity_steps(t: TrainConfig, num_examples: int) -> int:
    """Optimizer steps of a local update over ``num_examples`` (what :meth:`Engine.train` makes for ``t``)."""
    if t.local_steps > 0:
        return t.local_steps
    return max(1, math.ceil(t.local_epochs * math.ceil(max(1, num_examples) / t.batch_size) / t.grad_accum))


@dataclass
class ClientReply:
    """Everything a client sends back: the upload and public bookkeeping, nothing private."""

    adapter: StateDict  # empty for local-only methods
    num_examples: int  # aggregation weight (real local examples)
    metrics: dict = field(default_factory=dict)


@dataclass
class ClientResult:
    reply: ClientReply  # goes to the server
    state: ClientState  # stays on the client, for its next round
    artifacts: dict = field(default_factory=dict)  # stays on the client's disk: synthetic data, filter counts


OnStep = Callable[[int, int, float], None]  # (step, total steps, loss): progress display


class ClientUpdate(Protocol):
    def __call__(
        self,
        engine: Engine,
        global_adapter: StateDict,
        examples: list[Example],
        state: ClientState,
        ctx: RoundContext,
        on_step: OnStep | None = None,
    ) -> ClientResult: ...


ServerAggregate = Callable[[StateDict, list["ClientReply"]], StateDict]


def client_seed(seed: int, round_idx: int, client: int) -> int:
    return int(np.random.SeedSequence([seed, round_idx, client]).generate_state(1)[0])


def sample_clients(seed: int, round_idx: int, num_clients: int, fraction: float, min_clients: int) -> list[int]:
    """The clients of one round: a seeded draw without replacement (the same for every method)."""
    k = min(num_clients, max(min_clients, int(round(fraction * num_clients))))
    rng = np.random.default_rng([seed, round_idx, 7919])
    return sorted(int(i) for i in rng.choice(num_clients, size=k, replace=False))


@dataclass(frozen=True)
class Method:
    """One federated method: a client update and a server aggregate, plus what a runtime must know about it."""

    name: str
    description: str
    client_update: ClientUpdate
    server_aggregate: ServerAggregate
    shares_adapter: bool = True  # False: clients never share anything (locit, locit-sa)
    pools_data: bool = False  # True: one virtual client holding every client's data (cenit; not deployable)
    personalizes: bool = False  # True: each client ends with its own adapter, clients/client_K/final (fedpit, locit*)

    def clients(self, cfg: Config, r: int) -> list[int]:
        """The clients that train in round ``r`` (a seeded draw, the same for every method that samples)."""
        f = cfg.federation
        return sample_clients(cfg.seed, r, cfg.partition.num_clients, f.fraction, f.min_clients)

    def round_config(self, cfg: Config) -> Config:
        """The config this method's clients train with (the run's own; CenIT changes the budget)."""
        return cfg

    def aggregate(self, cfg: Config, global_adapter: StateDict, replies: list[ClientReply]) -> StateDict:
        """The next global adapter: :attr:`server_aggregate`, then ``federation.server_lr`` of the step applied
        (``global + eta * (aggregate - global)``; 1.0 returns the aggregate itself, bit for bit)."""
        new = self.server_aggregate(global_adapter, replies)
        return server_step(global_adapter, new, cfg.federation.server_lr)

    def examples(self, train: list[Example], partition: Partition, k: int) -> list[Example]:
        """Client ``k``'s training data (in-process: the runtime holds every client's data)."""
        return partition.subset(train, k)


REGISTRY: dict[str, Method] = {}


def register(method: Method) -> Method:
    """Add a method to the registry (each module in ``fedpit.algorithms`` registers its own)."""
    REGISTRY[method.name] = method
    return method


def split_state(state: ClientState | dict) -> StateDict:
    """The private adapter held in ``state`` (empty when there is none yet)."""
    return state.local if isinstance(state, ClientState) else {}


def join_state(adapter: StateDict, shared: StateDict | None = None) -> ClientState:
    """A client state holding ``adapter`` as the private adapter (stacked on ``shared`` when given)."""
    return ClientState(dict(adapter), dict(shared or {}))


def fedavg(global_adapter: StateDict, replies: list[ClientReply]) -> StateDict:
    """Example-weighted mean of the uploads (the server side of FedIT, FedPIT, FedMIT, FedProx, CenIT)."""
    from ..adapters import weighted_average

    return weighted_average([r.adapter for r in replies], [r.num_examples for r in replies])


def server_step(old: StateDict, new: StateDict, eta: float) -> StateDict:
    """``old + eta * (new - old)``: a server learning rate on the aggregated update (1.0: ``new`` unchanged)."""
    return new if eta == 1.0 else mix(new, old, eta)


def keep_global(global_adapter: StateDict, replies: list[ClientReply]) -> StateDict:
    """Local-only methods: nothing is aggregated."""
    return global_adapter


def train_stats(prefix: str, stats) -> dict:
    return {f"{prefix}{k}": v for k, v in stats.as_dict().items()}
