"""FedPIT v2 / PPFedIT (the journal version): IFS-selected synthetic data and local aggregation sharing.

Each round, per client (all three adapters start from the received global adapter):
1. the shared global model writes ``candidates`` synthetic examples (default 32);
2. the *private* adapter is trained on the real local data only;
3. the private model scores each candidate by the instruction-following score IFS = L(y|x) / L(y) (mean
   response-token loss with and without the prompt) and the ``keep`` lowest (default 16) are kept;
4. the *public* adapter is trained on the kept synthetic data;
5. the upload is beta * private + (1 - beta) * public (LoRA A and B mixed separately; default beta 0.5).

beta = 1 uploads exactly the private adapter, i.e. FedIT's update (tested bit for bit).
"""

from __future__ import annotations

from ..adapters import StateDict, mix
from ..prompts import encode
from ..selfgen import self_generate
from .base import ClientReply, ClientResult, ClientState, Method, RoundContext, fedavg, register, train_stats


def ifs_scores(engine, examples: list) -> list[float]:
    """IFS = L(y|x) / L(y) under the currently loaded adapter (lower: the prompt explains the response better)."""
    with_prompt = engine.encode(examples)
    alone = [encode(engine.tokenizer, "", ex.output, engine.max_seq_len) for ex in examples]
    cond = engine.example_losses(with_prompt)
    uncond = engine.example_losses(alone)
    return [c / u if u > 0 else float("inf") for c, u in zip(cond, uncond)]


def select_by_ifs(examples: list, scores: list[float], keep: int) -> list:
    order = sorted(range(len(examples)), key=lambda i: (scores[i], i))
    return [examples[i] for i in order[:keep]]


def client_update(engine, global_adapter: StateDict, examples: list, state: ClientState, ctx: RoundContext,
                  on_step=None) -> ClientResult:
    p = ctx.params.fedpit
    engine.load_adapter(global_adapter)
    candidates, report = self_generate(engine.model, engine.tokenizer, examples, ctx.params.selfgen, seed=ctx.seed,
                                       template=engine.template, num=p.candidates)

    engine.load_adapter(global_adapter)
    private_stats = engine.train(examples, on_step=on_step, **ctx.train_kwargs())
    private = engine.adapter_state()

    scores = ifs_scores(engine, candidates) if candidates else []
    kept = select_by_ifs(candidates, scores, p.keep)

    engine.load_adapter(global_adapter)
    public_stats = engine.train(kept, on_step=on_step, **ctx.train_kwargs(seed_offset=1, synthetic=True))
    public = engine.adapter_state()

    metrics = {**private_stats.as_dict(), **train_stats("public_", public_stats), "synthetic": len(kept),
               "candidates": len(candidates), "selfgen": report.as_dict()}
    return ClientResult(ClientReply(mix(private, public, p.beta), len(examples), metrics), state,
                        {"synthetic": kept, "selfgen": report.as_dict(),
                         "ifs": [{"instruction": c.instruction, "ifs": s} for c, s in zip(candidates, scores)]})


METHOD = register(Method(
    name="fedpit-mix",
    description="journal variant: upload beta*private + (1-beta)*public, synthetic data kept by lowest IFS",
    client_update=client_update, server_aggregate=fedavg))
