"""Every method on the tiny model: isolation, beta = 1 equals FedIT, IFS ordering, FedProx, FewFedWeight, runs."""

import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from fedpit.adapters import max_abs_diff
from fedpit.algorithms import (
    REGISTRY,
    RoundContext,
    fedit,
    fedmit,
    fedpit,
    fedpit_mix,
    fedprox,
    fewfedweight,
    locit,
    locit_sa,
)
from fedpit.algorithms.base import LOCAL_PREFIX, split_state
from fedpit.config import GEN_TEMPLATES, SELECT_BY, Config, FedPITConfig, FedProxConfig, TrainConfig
from fedpit.data import Example, load_demo
from fedpit.runner import Runner
from fedpit.selfgen import SelfGenReport

SYNTH = [
    Example(
        instruction=f"Synthetic task {i}: describe a healthy habit number {i}.",
        output=f"Habit {i} helps the heart, sleep and mood when done most days of the week.",
        category="synthetic",
    )
    for i in range(5)
]


@pytest.fixture
def fixed_synthetic(monkeypatch):
    """Self-generation replaced by a fixed synthetic set, recording which adapter was loaded when it ran."""
    calls = []

    def fake(model, tok, local, s, *, seed, template="alpaca", num=None, respond=None):
        calls.append({"n_local": len(local)})
        return list(SYNTH), SelfGenReport(kept=len(SYNTH))

    for mod in (fedpit, fedpit_mix, fedmit, locit_sa):
        monkeypatch.setattr(mod, "self_generate", fake)
    return calls


def ctx(seed=5, beta=0.5, candidates=8, keep=4, mu=0.01):
    cfg = Config(
        train=TrainConfig(local_steps=3, batch_size=2),
        fedpit=FedPITConfig(beta=beta, candidates=candidates, keep=keep),
        fedprox=FedProxConfig(mu=mu),
    )
    return RoundContext(round=1, client_id=0, lr=5e-3, seed=seed, cfg=cfg)


def _perturbed(engine):
    g = torch.Generator().manual_seed(1)
    return {k: v + 0.01 * torch.randn(v.shape, generator=g) for k, v in engine.initial_adapter.items()}


def _tensors_equal_any(t, pool):
    return any(t.shape == p.shape and torch.equal(t, p) for p in pool)


def test_fedpit_upload_never_depends_on_private_data(engine, fixed_synthetic):
    """Isolation: with the same synthetic set, two clients with different private data upload identical adapters,
    and no upload tensor equals any tensor of the private local adapter."""
    g = _perturbed(engine)
    private_a = load_demo("train")[:6]
    private_b = load_demo("train")[40:50]
    ra = fedpit.client_update(engine, g, private_a, {}, ctx())
    rb = fedpit.client_update(engine, g, private_b, {}, ctx())
    assert max_abs_diff(ra.reply.adapter, rb.reply.adapter) == 0.0
    # the upload is exactly the global adapter trained on the synthetic data only
    engine.load_adapter(g)
    engine.train(SYNTH, **ctx().train_kwargs(synthetic=True))
    assert max_abs_diff(ra.reply.adapter, engine.adapter_state()) == 0.0
    # the private adapter did learn from private data, and none of it is in the reply
    local_a, local_b = split_state(ra.state), split_state(rb.state)
    assert set(ra.state.local) == set(g)
    assert max_abs_diff(local_a, local_b) > 0
    lora_b = [v for k, v in local_a.items() if "lora_B" in k]
    assert not any(_tensors_equal_any(t, lora_b) for t in ra.reply.adapter.values())
    assert not any(k.startswith(LOCAL_PREFIX) for k in ra.reply.adapter)
    assert set(ra.reply.metrics) >= {"loss", "local_loss", "synthetic", "selfgen"}

    # public bookkeeping only: plain numbers and counts, nothing that could hold a tensor or text
    def leaves(d):
        return [x for v in d.values() for x in (leaves(v) if isinstance(v, dict) else [v])]

    settings = {*SELECT_BY, *GEN_TEMPLATES, ""}  # the only strings: names of settings the server already knows
    odd = [v for v in leaves(ra.reply.metrics) if not (isinstance(v, (int, float)) or v is None or v in settings)]
    assert not odd, odd
    assert json.loads(json.dumps(ra.reply.metrics)) == ra.reply.metrics


def test_fedpit_local_adapter_persists_across_rounds(engine, fixed_synthetic):
    g = _perturbed(engine)
    data = load_demo("train")[:6]
    first = fedpit.client_update(engine, g, data, {}, ctx())
    second = fedpit.client_update(engine, g, data, first.state, replace(ctx(), round=2))
    fresh = fedpit.client_update(engine, g, data, {}, replace(ctx(), round=2))
    # round 2 continues from round 1's private adapter, not from the global one
    assert max_abs_diff(split_state(second.state), split_state(fresh.state)) > 0
    assert max_abs_diff(second.reply.adapter, fresh.reply.adapter) == 0.0


def test_fedpit_mix_with_beta_one_is_fedit_bit_for_bit(engine, fixed_synthetic):
    g = _perturbed(engine)
    data = load_demo("train")[:6]
    mixed = fedpit_mix.client_update(engine, g, data, {}, ctx(beta=1.0, candidates=5, keep=2))
    plain = fedit.client_update(engine, g, data, {}, ctx())
    assert all(torch.equal(mixed.reply.adapter[k], plain.reply.adapter[k]) for k in plain.reply.adapter)
    half = fedpit_mix.client_update(engine, g, data, {}, ctx(beta=0.5, candidates=5, keep=2))
    assert max_abs_diff(half.reply.adapter, plain.reply.adapter) > 0
    assert half.reply.metrics["synthetic"] == 2 and len(half.artifacts["synthetic"]) == 2


def test_ifs_is_conditional_over_unconditional_loss_and_keeps_the_lowest(engine, monkeypatch):
    cands = SYNTH[:4]
    cond, uncond = [2.0, 1.0, 3.0, 0.5], [4.0, 4.0, 3.0, 0.25]
    calls = iter([cond, uncond])
    monkeypatch.setattr(engine, "example_losses", lambda enc: next(calls))
    scores = fedpit_mix.ifs_scores(engine, cands)
    assert scores == [0.5, 0.25, 1.0, 2.0]
    assert fedpit_mix.select_by_ifs(cands, scores, 2) == [cands[1], cands[0]]


def test_ifs_prefers_responses_the_prompt_explains(engine):
    """A constructed case on a trained model: after learning 'capital of X -> Y', the matching pair scores lower
    (better) than the same response under an unrelated prompt."""
    pairs = [
        Example(instruction=f"Name code {i}.", output=f"The code is {w} {w} {w}.")
        for i, w in enumerate(["ruby", "amber", "coral", "ivory"])
    ]
    engine.load_adapter(engine.initial_adapter)
    engine.train(pairs * 4, lr=2e-2, steps=40, batch_size=4, seed=0)
    matched = fedpit_mix.ifs_scores(engine, pairs)
    swapped = fedpit_mix.ifs_scores(
        engine, [Example(instruction=pairs[(i + 1) % 4].instruction, output=p.output) for i, p in enumerate(pairs)]
    )
    assert sum(matched) < sum(swapped)


def test_fedprox_with_mu_zero_is_fedit_and_the_term_pulls_towards_global(engine):
    g = _perturbed(engine)
    data = load_demo("train")[:6]
    a = fedprox.client_update(engine, g, data, {}, ctx(mu=0.0))
    b = fedit.client_update(engine, g, data, {}, ctx())
    assert max_abs_diff(a.reply.adapter, b.reply.adapter) == 0.0
    engine.load_adapter(g)
    term = engine.proximal_term(g, mu=1.0)
    assert float(term()) == 0.0
    engine.load_adapter({k: v + 0.1 for k, v in g.items()})
    n = sum(v.numel() for v in g.values())
    assert float(term()) == pytest.approx(0.5 * n * 0.01, rel=1e-3)
    strong = fedprox.client_update(engine, g, data, {}, ctx(mu=100.0))
    assert max_abs_diff(strong.reply.adapter, g) < max_abs_diff(b.reply.adapter, g)


def test_fewfedweight_energy_weights_and_aggregation():
    w = fewfedweight.energy_weights([1.0, 2.0, 3.0])
    assert sum(w) == pytest.approx(3.0) and w[0] > w[1] > w[2]
    assert fewfedweight.energy_weights([2.0, 2.0]) == [1.0, 1.0]
    from fedpit.algorithms.base import ClientReply

    reps = [ClientReply({}, 10, {"val_loss": 1.0}), ClientReply({}, 10, {"val_loss": 2.0})]
    a, b = fewfedweight.aggregation_weights(reps)
    assert a / b == pytest.approx(torch.e, rel=1e-6)


def test_locit_shares_nothing(engine):
    r = locit.client_update(engine, engine.initial_adapter, load_demo("train")[:4], {}, ctx())
    assert r.reply.adapter == {} and set(r.state.local) == set(engine.adapter_state())


@pytest.mark.parametrize("name", sorted(REGISTRY))
def test_every_algorithm_completes_a_round_on_the_tiny_model(name, tiny_cfg):
    cfg = replace(
        tiny_cfg,
        algorithm=name,
        run_name=f"t-{name}",
        federation=replace(tiny_cfg.federation, rounds=1),
        selfgen=replace(tiny_cfg.selfgen, num_instructions=2, max_instruction_tokens=8, max_response_tokens=8),
        fedpit=replace(tiny_cfg.fedpit, candidates=2, keep=1),
        fewfedweight=replace(tiny_cfg.fewfedweight, pseudo_samples=2),
    )
    summary = Runner(cfg, show_progress=False).run()
    rd = Path(summary["run_dir"])
    rows = [json.loads(x) for x in (rd / "metrics.jsonl").read_text().splitlines()]
    clients = [r for r in rows if r["kind"] == "client"]
    if REGISTRY[name].pools_data:
        assert [r["client"] for r in clients] == [0] and clients[0]["examples"] == 160
        assert clients[0]["steps"] == 2 * 3  # the federation's budget: local_steps x num_clients
    else:
        assert sorted(r["client"] for r in clients) == [0, 1, 2]
    if REGISTRY[name].shares_adapter:
        assert all(r["bytes_sent"] > 0 for r in clients)
    else:
        assert all(r["bytes_sent"] == 0 == r["bytes_received"] for r in clients)
    if REGISTRY[name].personalizes:  # what the frontier's plan and its audit checks count on
        assert len(summary["personal_adapters"]) == 3
        assert (rd / "clients" / "client_0" / "final" / "adapter_model.safetensors").is_file()
    else:
        assert not summary.get("personal_adapters") and not (rd / "clients" / "client_0" / "final").exists()
    if name in ("fedpit", "fedmit", "fedpit-mix", "locit-sa"):
        counts = json.loads((rd / "clients" / "client_0" / "round_001" / "selfgen.json").read_text())
        assert counts["generated_instructions"] >= 2 and "dropped" in counts
        assert (rd / "clients" / "client_0" / "round_001" / "synthetic.jsonl").is_file()
    assert (rd / "summary.json").is_file()


def test_fedpit_client_state_survives_resume(tiny_cfg, fixed_synthetic):
    cfg = replace(tiny_cfg, algorithm="fedpit", run_name="full")
    full = Runner(cfg, show_progress=False).run()
    part = Runner(replace(cfg, run_name="part"), show_progress=False).run(stop_after=1)
    from fedpit.cli import main

    assert main(["run", "--resume", part["run_dir"], "--quiet"]) == 0
    for k in range(3):
        a = Path(full["run_dir"]) / "clients" / f"client_{k}" / "final" / "adapter_model.safetensors"
        b = Path(part["run_dir"]) / "clients" / f"client_{k}" / "final" / "adapter_model.safetensors"
        from fedpit.adapters import load_state

        assert max_abs_diff(load_state(a), load_state(b)) == 0.0


def test_extraction_attack_every_round_and_on_every_final_model(tiny_cfg, fixed_synthetic):
    cfg = replace(
        tiny_cfg,
        algorithm="fedpit",
        run_name="attack",
        eval=replace(tiny_cfg.eval, extraction_every_round=True, extraction_n=3, extraction_max_new_tokens=4),
    )
    summary = Runner(cfg, show_progress=False).run()
    rd = Path(summary["run_dir"])
    rounds = [json.loads(x) for x in (rd / "metrics.jsonl").read_text().splitlines()]
    attacked = [r for r in rounds if r["kind"] == "round" and r["round"] > 0]
    assert all(
        set(r["extraction"]) == {"n", "rouge_l", "exact", "prefix_exact"} and r["extraction"]["n"] == 3
        for r in attacked
    )
    assert set(summary["extraction"]) == {
        "backbone",
        "shared",
        "private_client_0",
        "private_client_1",
        "private_client_2",
    }
    rows = (rd / "extraction" / "shared_round_002.jsonl").read_text().splitlines()
    assert len(rows) == 3 and {"continuation", "rouge_l", "exact", "prefix_exact"} <= set(json.loads(rows[0]))


def _ctx_with(budget, **fedpit_kw):
    cfg = Config(train=budget, fedpit=FedPITConfig(**fedpit_kw))
    return RoundContext(round=1, client_id=0, lr=5e-3, seed=5, cfg=cfg)


@pytest.mark.parametrize(
    "budget", [TrainConfig(local_steps=3, batch_size=2), TrainConfig(local_epochs=1, local_steps=0, batch_size=2)]
)
def test_budget_parity_gives_the_shared_adapter_fedits_step_count(engine, fixed_synthetic, budget):
    g = _perturbed(engine)
    data = load_demo("train")[:10]  # FedIT by epochs: 5 steps of 2; the 5 synthetic examples alone: 3 steps
    plain = fedit.client_update(engine, g, data, {}, _ctx_with(budget))
    parity = fedpit.client_update(engine, g, data, {}, _ctx_with(budget, shared_budget="parity"))
    default = fedpit.client_update(engine, g, data, {}, _ctx_with(budget))
    assert parity.reply.metrics["steps"] == plain.reply.metrics["steps"] == (3 if budget.local_steps else 5)
    assert default.reply.metrics["steps"] == 3  # one pass over 5 synthetic examples in batches of 2
    mix = fedpit_mix.client_update(engine, g, data, {}, _ctx_with(budget, shared_budget="parity", keep=4))
    assert mix.reply.metrics["public_steps"] == plain.reply.metrics["steps"]


@pytest.mark.parametrize("by", ["ifs", "relevance", "first"])
def test_fedpit_v1_selects_candidates_and_records_the_counts(engine, fixed_synthetic, by):
    g = _perturbed(engine)
    data = load_demo("train")[:6]
    r = fedpit.client_update(
        engine, g, data, {}, _ctx_with(TrainConfig(local_steps=2, batch_size=2), candidates=5, keep=2, select_by=by)
    )
    m = r.reply.metrics
    assert m["candidates"] == 5 and m["kept"] == 2 == m["synthetic"] == len(r.artifacts["synthetic"])
    sel = r.artifacts["selfgen"]
    assert sel["select_by"] == by and [row["kept"] for row in sel["rows"]].count(True) == 2
    assert {"on_task", "answer_relevance", "private_rouge_l", "ifs"} <= set(sel["rows"][0])
    assert m["selfgen"]["quality"]["n"] == 2 and "rows" not in m["selfgen"] and json.dumps(m)
    if by == "ifs":
        kept_ifs = sorted(row["ifs"] for row in sel["rows"] if row["kept"])
        assert kept_ifs == sorted(row["ifs"] for row in sel["rows"])[:2]
    again = fedpit.client_update(
        engine, g, data, {}, _ctx_with(TrainConfig(local_steps=2, batch_size=2), candidates=5, keep=2, select_by=by)
    )
    assert again.artifacts["synthetic"] == r.artifacts["synthetic"]
