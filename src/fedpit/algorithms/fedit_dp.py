"""FedIT with DP-SGD on each client (Abadi et al. 2016, through Opacus): the privacy baseline of individual records.

Each sampled client trains the global adapter with DP-SGD (:mod:`fedpit.dp`: Poisson-sampled batches, each example's
gradient clipped to ``dp.max_grad_norm``, Gaussian noise, Opacus' RDP accountant) and uploads it; the server averages
the uploads as FedIT does. An upload is (epsilon, delta)-DP for the client's examples and all that follows it (the
average, later rounds) is post-processing, so a client's epsilon over its rounds, kept in its private state, is its
examples' guarantee; ``summary.json``'s ``dp.epsilon`` is the largest over the clients.
"""

from __future__ import annotations

from dataclasses import replace

from ..adapters import StateDict
from ..dp import client_metrics, train_private
from .base import ClientReply, ClientResult, ClientState, Method, RoundContext, fedavg, register


def client_update(
    engine, global_adapter: StateDict, examples: list, state: ClientState, ctx: RoundContext, on_step=None
) -> ClientResult:
    engine.load_adapter(global_adapter)
    stats, history, plan = train_private(
        engine, examples, ctx.cfg, lr=ctx.lr, seed=ctx.seed, history=state.accountant, on_step=on_step
    )
    metrics = stats.as_dict() | client_metrics(ctx.cfg, plan, history)
    return ClientResult(ClientReply(engine.adapter_state(), len(examples), metrics), replace(state, accountant=history))


METHOD = register(
    Method(
        name="fedit-dp",
        description="FedIT whose clients train with DP-SGD (Opacus: per-example clipping, noise, RDP accountant)",
        client_update=client_update,
        server_aggregate=fedavg,
    )
)
