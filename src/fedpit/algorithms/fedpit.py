"""FedPIT v1 (the seed article; arXiv 2403.06131 v1): self-generation + parameter-isolated training.

Each round, per client:
1. the shared global model writes synthetic examples from the client's own demonstrations (``fedpit.selfgen``);
2. a copy of the global adapter is trained on the synthetic data **only**: this is the upload, so the shared model
   never sees a private example;
3. the client's private local adapter (created from the first global adapter it receives, kept across rounds) is
   trained on local + synthetic data ("augmented local data") and never leaves the client.

The server averages the uploads weighted by real example counts. Two models come out: the shared global adapter and
each client's personalized adapter (backbone + local adapter).

Selection (``fedpit.select_by``, the journal's step 3 applied to v1): ``off`` (default) has no selection step:
``selfgen.num_instructions`` examples, all kept. ``ifs``, ``relevance`` or ``first`` generate ``fedpit.candidates`` and
keep ``fedpit.keep`` (the lowest IFS, the highest relevance, or the first in generation order); IFS is computed by the
client's private adapter as it stands at the start of the round (round 1: the received global adapter, from which the
private adapter is created).
``fedpit.shared_budget=parity`` trains the shared adapter for the local step budget (FedIT's) instead of
``fedpit.synthetic_epochs`` passes.

Personalization (``fedpit.personal``): ``independent`` (default, v1) as above: the private adapter is a model of its
own, backbone + private, and never sees a later shared adapter. ``stacked`` (as FedDPA): the private adapter is
trained on top of the shared adapter received this round, frozen (two LoRA adapters stacked with peft's multi-adapter
support), so the personalized model is backbone + shared + private. It starts as the untrained initial adapter (LoRA
B = 0: the stack starts as the shared model), keeps training across rounds on each new shared adapter, and the client
state records the shared adapter it sits on. IFS (selection, measures) is then scored by the stack. The upload is
computed the same way in both modes (step 2 never involves the private adapter).

The private model as a teacher (off by default; every setting is judged by ``fedpit audit``): the private text and
the private parameters stay on the client, and the private model teaches the shared one on text the client exposes.
With either role on, the private adapter first trains on this round's real data only (as fedpit-mix's does; it
does not train on synthetic text it wrote itself), and that trained private model is the one that teaches. The
private model at the start of the round cannot: in round 1 it is the received global adapter itself (independent)
or an untrained one (stacked).
- ``selfgen.responder = private``: the shared model writes the instructions (from the client's demonstrations, as
  before) and the private model writes the answers; with ``selfgen.public_data`` it answers the public instructions.
- ``fedpit.shared_target = distill``: the shared adapter trains on the kept examples with
  ``distill_weight`` x cross-entropy + (1 - ``distill_weight``) x T^2 x KL(p_teacher || p_shared), p_teacher =
  ``teacher_mix`` x p_private + (1 - ``teacher_mix``) x p_global (:class:`fedpit.engine.Teacher`).
- ``selfgen.accumulate``: the shared adapter trains on every example kept so far (kept in the client state), not
  only this round's.
"""

from __future__ import annotations

import contextlib

from ..adapters import StateDict
from ..engine import Teacher
from ..selfgen import assess_and_select, ifs_terms, selection_size, self_generate
from .base import (
    ClientReply,
    ClientResult,
    ClientState,
    Method,
    RoundContext,
    fedavg,
    join_state,
    register,
    split_state,
    train_stats,
)


def client_update(
    engine, global_adapter: StateDict, examples: list, state: ClientState, ctx: RoundContext, on_step=None
) -> ClientResult:
    p, s = ctx.cfg.fedpit, ctx.cfg.selfgen
    select_by = p.select_by
    num, keep = selection_size(select_by, s, p)
    stack = global_adapter if p.personal == "stacked" else None  # the frozen shared adapter under the private one
    private_start = split_state(state) or (global_adapter if stack is None else engine.initial_adapter)
    teaches = s.responder == "private" or p.shared_target == "distill"
    local = None
    if teaches:  # the private model learns this round's real data first, then answers and/or teaches
        private_start, local = _train_private(engine, private_start, stack, examples, ctx, on_step)
    engine.load_adapter(global_adapter)  # the shared model writes the instructions, never a private adapter
    candidates, report = self_generate(
        engine.model,
        engine.tokenizer,
        examples,
        s,
        seed=ctx.seed,
        template=engine.template,
        num=num,
        respond=private_model(engine, private_start, stack, global_adapter) if s.responder == "private" else None,
    )
    ifs = None
    if candidates and (s.measure or select_by == "ifs"):
        engine.load_adapter(private_start)  # the private adapter scores; nothing it computes is uploaded but the choice
        with engine.stacked(stack):
            ifs = ifs_terms(engine, candidates)
    synthetic = assess_and_select(candidates, examples, s, report, select_by=select_by, keep=keep, ifs=ifs)
    pool = (state.pool if isinstance(state, ClientState) else []) + synthetic if s.accumulate else synthetic

    engine.load_adapter(global_adapter)
    teacher = None
    if p.shared_target == "distill":
        teacher = Teacher(private_start, global_adapter, p.teacher_mix, p.distill_weight, p.distill_temperature, stack)
    kw = ctx.train_kwargs(synthetic=True, local_examples=len(examples))
    shared = engine.train(pool, on_step=on_step, teacher=teacher, **kw)
    upload = engine.adapter_state()

    if not teaches:  # v1: the private adapter trains on local + synthetic data after the upload is made
        private_start, local = _train_private(engine, private_start, stack, examples + synthetic, ctx, on_step)
    new_state = join_state(private_start, stack)
    new_state.pool = pool if s.accumulate else []

    metrics = {
        **shared.as_dict(),
        **train_stats("local_", local),
        "synthetic": len(synthetic),
        "candidates": len(candidates),
        "kept": len(synthetic),
        **({"shared_pool": len(pool)} if s.accumulate else {}),
        "selfgen": report.as_dict(),
    }
    return ClientResult(
        ClientReply(upload, len(examples), metrics),
        new_state,
        {"synthetic": synthetic, "selfgen": report.as_dict(rows=True)},
    )


def _train_private(engine, start: StateDict, stack: StateDict | None, data: list, ctx: RoundContext, on_step):
    """The private adapter trained from ``start`` (on top of ``stack`` where stacked): its new state and stats."""
    engine.load_adapter(start)
    with engine.stacked(stack):
        stats = engine.train(data, on_step=on_step, **ctx.train_kwargs(seed_offset=1))
    return engine.adapter_state(), stats


def private_model(engine, private: StateDict, stack: StateDict | None, shared: StateDict):
    """A context factory: within, the engine's model is the client's private model (stacked on ``stack`` where it
    is a stacked private adapter); on leaving, the shared adapter is loaded again."""

    @contextlib.contextmanager
    def within():
        engine.load_adapter(private)
        try:
            with engine.stacked(stack):
                yield
        finally:
            engine.load_adapter(shared)

    return within


METHOD = register(
    Method(
        name="fedpit",
        description="shared adapter trained on self-generated data only; "
        "private local adapter on local + synthetic data",
        client_update=client_update,
        server_aggregate=fedavg,
        personalizes=True,
    )
)
