"""FedPIT v2 / PPFedIT (the journal version): IFS-selected synthetic data and local aggregation sharing.

Each round, per client (all three adapters start from the received global adapter):
1. the shared global model writes ``candidates`` synthetic examples (default 32);
2. the *private* adapter is trained on the real local data only;
3. the private model scores each candidate by the instruction-following score IFS = L(y|x) / L(y) (mean
   response-token loss with and without the prompt) and the ``keep`` lowest (default 16) are kept;
4. the *public* adapter is trained on the kept synthetic data;
5. the upload is beta * private + (1 - beta) * public (LoRA A and B mixed separately; default beta 0.5).

beta = 1 uploads exactly the private adapter, i.e. FedIT's update (tested bit for bit).

``fedpit.mix_select_by`` picks the score (``ifs``, the default and the journal's; ``relevance``: MiniLM on-task and
answer relevance; ``first``: the first ``keep`` in generation order, the journal's random baseline; ``off``: no
selection, ``selfgen.num_instructions`` generated and all kept). ``fedpit.candidates`` and ``fedpit.keep`` are shared
with ``fedpit`` when it selects.
"""

from __future__ import annotations

from ..adapters import StateDict, mix
from ..engine import Teacher
from ..selfgen import assess_and_select, ifs_ratio, ifs_terms, selection_size, self_generate, top_k
from .base import ClientReply, ClientResult, ClientState, Method, RoundContext, fedavg, register, train_stats
from .fedpit import private_model


def ifs_scores(engine, examples: list) -> list[float]:
    """IFS = L(y|x) / L(y) under the currently loaded adapter (lower: the prompt explains the response better)."""
    return [ifs_ratio(c, u) for c, u in zip(*ifs_terms(engine, examples))]


def select_by_ifs(examples: list, scores: list[float], keep: int) -> list:
    return [examples[i] for i in top_k(scores, keep, lower_is_better=True)]


def client_update(
    engine, global_adapter: StateDict, examples: list, state: ClientState, ctx: RoundContext, on_step=None
) -> ClientResult:
    p, s = ctx.cfg.fedpit, ctx.cfg.selfgen
    select_by = p.mix_select_by
    num, keep = selection_size(select_by, s, p)
    answers = s.responder == "private"
    if answers:  # the private model trains first, then writes the answers
        engine.load_adapter(global_adapter)
        private_stats = engine.train(examples, on_step=on_step, **ctx.train_kwargs())
        private = engine.adapter_state()
    engine.load_adapter(global_adapter)
    candidates, report = self_generate(
        engine.model,
        engine.tokenizer,
        examples,
        s,
        seed=ctx.seed,
        template=engine.template,
        num=num,
        respond=private_model(engine, private, None, global_adapter) if answers else None,
    )

    if not answers:
        engine.load_adapter(global_adapter)
        private_stats = engine.train(examples, on_step=on_step, **ctx.train_kwargs())
        private = engine.adapter_state()
    engine.load_adapter(private)
    ifs = ifs_terms(engine, candidates) if candidates and (s.measure or select_by == "ifs") else None
    kept = assess_and_select(candidates, examples, s, report, keep=keep, select_by=select_by, ifs=ifs)
    pool = (state.pool if isinstance(state, ClientState) else []) + kept if s.accumulate else kept

    engine.load_adapter(global_adapter)
    teacher = None
    if p.shared_target == "distill":
        teacher = Teacher(private, global_adapter, p.teacher_mix, p.distill_weight, p.distill_temperature)
    kw = ctx.train_kwargs(seed_offset=1, synthetic=True, local_examples=len(examples))
    public_stats = engine.train(pool, on_step=on_step, teacher=teacher, **kw)
    public = engine.adapter_state()

    metrics = {
        **private_stats.as_dict(),
        **train_stats("public_", public_stats),
        "synthetic": len(kept),
        "candidates": len(candidates),
        "kept": len(kept),
        **({"shared_pool": len(pool)} if s.accumulate else {}),
        "selfgen": report.as_dict(),
    }
    return ClientResult(
        ClientReply(mix(private, public, p.beta), len(examples), metrics),
        ClientState(pool=pool) if s.accumulate else state,
        {"synthetic": kept, "selfgen": report.as_dict(rows=True)},
    )


METHOD = register(
    Method(
        name="fedpit-mix",
        description="journal variant: upload beta*private + (1-beta)*public, synthetic data kept by lowest IFS",
        client_update=client_update,
        server_aggregate=fedavg,
    )
)
