"""The audit's instruments on constructed inputs and the tiny model: AUC/TPR, the member/non-member split, the
canaries and their exposure by the digit trie, and the leak scan."""

from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score

from fedpit.audit import mia
from fedpit.audit.canaries import Canary, digit_token_ids, exposure, make_canaries, prefix_ids, secret_logprobs
from fedpit.audit.data import CANARY_LABEL, split_pool, training_set
from fedpit.audit.leaks import describe, scan
from fedpit.config import load_config
from fedpit.errors import ConfigError
from fedpit.federation import client_share, load_train, prepare
from fedpit.prompts import encode_example


# ---------------------------------------------------------------------------------------------- membership inference
def test_auc_and_tpr_on_constructed_scores():
    rng = np.random.default_rng(0)
    low, high = rng.normal(0, 1, 200), rng.normal(10, 1, 150)
    assert mia.auc(high, low) == 1.0 and mia.auc(low, high) == 0.0
    assert mia.bootstrap_auc_ci(high, low, 200, 1) == (1.0, 1.0)
    assert mia.tpr_at_fpr(high, low, 0.10) == 1.0
    # the same distribution for members and non-members: chance, and the interval says so
    same_m, same_n = rng.normal(0, 1, 300), rng.normal(0, 1, 300)
    lo, hi = mia.bootstrap_auc_ci(same_m, same_n, 1000, 2)
    assert lo < 0.5 < hi and hi - lo < 0.2
    # 30% of members far above every non-member, the rest in the middle: TPR 0.3 until FPR reaches 50%
    nonmembers, members = np.arange(100.0), np.r_[np.full(30, 1000.0), np.full(70, 49.5)]
    assert mia.tpr_at_fpr(members, nonmembers, 0.10) == pytest.approx(0.3)
    assert mia.tpr_at_fpr(members, nonmembers, 0.50) == pytest.approx(1.0)
    rep = mia.report(members, nonmembers, bootstrap=200, seed=0)
    assert rep["n_members"] == 100 and rep["n_nonmembers"] == 100 and "tpr_at_1pct_fpr" not in rep
    assert rep["auc"] == pytest.approx(0.3 + 0.7 * 0.5) and rep["auc_ci"][0] <= rep["auc"] <= rep["auc_ci"][1]
    assert "tpr_at_1pct_fpr" in mia.report(rng.normal(1, 1, 50), rng.normal(0, 1, 1000), bootstrap=100)


def test_bootstrap_auc_is_the_mann_whitney_auc_of_each_resample_ties_included():
    rng = np.random.default_rng(3)
    m, n = rng.integers(0, 5, (4, 30)).astype(float), rng.integers(0, 5, (4, 40)).astype(float)  # many ties
    got = mia._auc_rows(m, n)
    want = [roc_auc_score(np.r_[np.ones(30), np.zeros(40)], np.r_[a, b]) for a, b in zip(m, n)]
    assert got == pytest.approx(want)
    values = rng.normal(2.0, 1.0, 400)
    lo, hi = mia.bootstrap_mean_ci(values, 1000, 0)
    assert lo < values.mean() < hi and hi - lo < 0.3
    assert mia.zlib_bytes("a" * 1000) < mia.zlib_bytes("".join(map(str, rng.integers(0, 10, 1000))))


# ---------------------------------------------------------------------------------------------- the split
def _cfg(tmp_path, *items):
    return load_config(overrides=[f"output_dir={tmp_path / 'runs'}", "run_name=r", *items])


def test_holdout_split_is_seeded_disjoint_and_off_by_default(tmp_path):
    pool = load_train(_cfg(tmp_path))
    members, private = split_pool(_cfg(tmp_path, "privacy.holdout=0.25"), pool)
    assert len(private.holdout) == 40 and len(members) == 120 and private.members == 120
    assert set(members).isdisjoint(private.holdout) and set(members) | set(private.holdout) == set(pool)
    assert members == [e for e in pool if e in set(members)]  # the pool's order kept
    again, _ = split_pool(_cfg(tmp_path, "privacy.holdout=0.25"), pool)
    other, _ = split_pool(_cfg(tmp_path, "privacy.holdout=0.25", "seed=7"), pool)
    assert again == members and other != members
    # the defaults train on the pool itself, and prepare() partitions exactly what it did before
    default = prepare(_cfg(tmp_path))
    assert default.train == pool and sorted(i for c in default.partition.clients for i in c) == list(range(160))
    assert not default.private.holdout and not default.private.canaries
    prep = prepare(_cfg(tmp_path, "privacy.holdout=0.25"))
    assert prep.train == members and not set(prep.train) & set(prep.private.holdout)


def test_canaries_join_their_clients_data_in_both_runtimes(tmp_path):
    cfg = _cfg(tmp_path, "privacy.holdout=0.25", "privacy.canaries=4", "privacy.canary_repeats=3")
    prep = prepare(cfg)
    canaries = prep.private.canaries
    assert [c.client for c in canaries] == [0, 1, 2, 0] and len(prep.train) == 120 + 12
    assert prep.partition.labels.count(CANARY_LABEL) == 12
    for k in range(3):
        share = prep.client_examples(k)
        for c in canaries:
            assert share.count(c.example) == (3 if c.client == k else 0)
        assert client_share(cfg, k) == share  # a Flower node re-partitions the same way
    # a node reading the server's partition.json gets the same share
    run = Path(cfg.output_dir) / cfg.run_name
    run.mkdir(parents=True)
    (run / "partition.json").write_text(json.dumps(prep.partition.to_dict()))
    assert [client_share(cfg, k) for k in range(3)] == [prep.client_examples(k) for k in range(3)]
    assert training_set(cfg, load_train(cfg)) == prep.train


def test_too_few_non_members_and_no_room_for_canaries_are_one_line_errors(tmp_path):
    with pytest.raises(ConfigError, match=r"privacy.holdout: 0.05 of the 160 examples .* 8 non-members; .*at least 10"):
        prepare(_cfg(tmp_path, "privacy.holdout=0.05"))
    with pytest.raises(ConfigError, match=r"privacy.holdout: .* 6 members and 154 non-members"):
        prepare(_cfg(tmp_path, "privacy.holdout=0.96"))
    with pytest.raises(ConfigError, match="privacy.canaries: no room for 11 distinct secrets"):
        _cfg(tmp_path, "privacy.canaries=11", "privacy.canary_digits=1")
    with pytest.raises(ConfigError, match="privacy.holdout: must be in"):
        _cfg(tmp_path, "privacy.holdout=1")
    with pytest.raises(ConfigError, match="at most 20000 canaries"):
        make_canaries(20001, 6, 3, 0)


# ---------------------------------------------------------------------------------------------- canaries
def test_canaries_are_seeded_distinct_and_dealt_in_turn():
    cs = make_canaries(12, 5, 5, seed=1)
    assert cs == make_canaries(12, 5, 5, seed=1) != make_canaries(12, 5, 5, seed=2)
    assert [c.client for c in cs] == [i % 5 for i in range(12)]
    assert len({c.secret for c in cs}) == 12 and all(len(c.secret) == 5 and c.secret.isdigit() for c in cs)
    assert len({c.lead for c in cs}) == 12 and all(c.example.output.endswith(c.secret) for c in cs)
    assert all(c.patient in c.instruction and c.patient in c.lead for c in cs)
    assert all(Canary.from_dict(c.to_dict()) == c for c in cs)


@pytest.fixture(scope="module")
def tiny(tiny_model_path):
    from transformers import AutoModelForCausalLM

    from fedpit.backbone import load_tokenizer

    tok = load_tokenizer(tiny_model_path)
    return AutoModelForCausalLM.from_pretrained(tiny_model_path, dtype=torch.float32).eval(), tok


def test_trie_logprobs_equal_full_sequence_forward_logprobs(tiny):
    model, tok = tiny
    digits = digit_token_ids(tok)
    c = make_canaries(1, 3, 1, seed=0)[0]
    prefix = prefix_ids(tok, c, digits, template="alpaca", max_len=128)
    scores = secret_logprobs(model, prefix, digits, 3, batch_size=7)  # batches that straddle the parents
    assert scores.shape == (1000,)
    for secret in ("000", "090", "417", c.secret, "999"):
        ids = torch.tensor([prefix + [digits[int(ch)] for ch in secret]])
        with torch.no_grad():
            lp = model(input_ids=ids).logits[0].float().log_softmax(-1)
        full = sum(float(lp[len(prefix) - 1 + j, digits[int(ch)]]) for j, ch in enumerate(secret))
        assert scores[int(secret)] == pytest.approx(full, abs=1e-4)
    assert np.exp(scores).sum() <= 1.0 + 1e-6  # a distribution over the space (less the mass of other tokens)


def test_exposure_is_the_log_rank_among_the_whole_space():
    scores = np.arange(1000.0)  # the secret 999 is the most likely, 000 the least
    assert exposure(scores, "999") == pytest.approx(math.log2(1000))
    assert exposure(scores, "000") == pytest.approx(0.0)
    assert exposure(scores, "499") == pytest.approx(math.log2(1000) - math.log2(501))
    assert exposure(np.zeros(1000), "123") == 0.0  # ties are counted ahead: no exposure from a flat model


def test_a_canary_trained_on_ranks_first_and_unseen_ones_average_near_zero(tiny_model_path):
    from transformers import AutoModelForCausalLM

    from fedpit.backbone import load_tokenizer

    tok = load_tokenizer(tiny_model_path)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_path, dtype=torch.float32)
    cs = make_canaries(10, 3, 1, seed=3)
    ids = torch.tensor([encode_example(tok, cs[0].example, max_len=128).input_ids])
    opt = torch.optim.Adam(model.parameters(), lr=5e-3)
    model.train()
    for _ in range(40):  # the canary, many times (30 steps already rank it first)
        model(input_ids=ids, labels=ids).loss.backward()
        opt.step()
        opt.zero_grad()
    model.eval()
    digits = digit_token_ids(tok)
    prefixes = [prefix_ids(tok, c, digits, template="alpaca", max_len=128) for c in cs]
    exp = [exposure(secret_logprobs(model, p, digits, 3), c.secret) for p, c in zip(prefixes, cs)]
    assert exp[0] == pytest.approx(math.log2(10**3))  # rank 1 of all 1,000 secrets
    assert np.mean(exp[1:]) < 4.0  # never seen: a uniform rank averages log2(e) = 1.44 bits


class _PairTokenizer:
    """Digits alone are single tokens, but two digits in a row merge into one (as many BPE vocabularies do)."""

    name_or_path = "pair-merging"

    def __call__(self, text, add_special_tokens=True):
        ids, i = [], 0
        while i < len(text):
            if text[i : i + 2].isdigit() and len(text[i : i + 2]) == 2:
                ids.append(1000 + int(text[i : i + 2]))
                i += 2
            else:
                ids.append(ord(text[i]))
                i += 1
        return type("Enc", (), {"input_ids": ids})()


def test_a_tokenizer_that_merges_digits_is_refused_in_one_line():
    tok = _PairTokenizer()
    digits = digit_token_ids(tok)
    with pytest.raises(ConfigError, match="does not give each digit its own token") as e:
        prefix_ids(tok, make_canaries(1, 4, 1, 0)[0], digits, template="alpaca", max_len=512)
    assert "\n" not in str(e.value) and "pair-merging" in str(e.value)


# ---------------------------------------------------------------------------------------------- leaks
def test_the_leak_scan_finds_a_planted_secret_and_nothing_else(tmp_path):
    cs = make_canaries(3, 5, 3, seed=0)
    secret = cs[2].secret
    rows = [
        {"instruction": "Summarize the ward note.", "output": "Nothing to report."},
        {"instruction": f"Which code was issued to {cs[2].patient}?", "output": f"It was {secret}."},
        {"instruction": "A longer number", "output": f"The batch is 9{secret}9 and not a secret."},
    ]
    synth = tmp_path / "clients" / "client_1" / "round_002" / "synthetic.jsonl"
    synth.parent.mkdir(parents=True)
    synth.write_text("".join(json.dumps(r) + "\n" for r in rows))
    metrics = [{"kind": "client", "round": 1, "tokens": int(secret), "note": f"secret {cs[0].secret} seen"}]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in metrics))
    (tmp_path / "clients" / "client_1" / "state.round_002.safetensors").write_bytes(secret.encode())  # not text
    hits = scan(tmp_path, cs)
    assert hits == [
        {
            "canary": 2,
            "owner": 2,
            "file": "clients/client_1/round_002/synthetic.jsonl",
            "line": 2,
            "field": "output",
            "names_patient": True,
        },
        {"canary": 0, "owner": 0, "file": "metrics.jsonl", "line": 1, "field": "note", "names_patient": False},
    ]
    assert all(secret not in describe(h) for h in hits) and "synthetic.jsonl line 2" in describe(hits[0])
    assert scan(tmp_path, cs, client=0) == hits[1:]  # a site scans its own outputs (and the metrics rows)
    assert scan(tmp_path, []) == []
    assert scan(tmp_path, [replace(cs[0], secret="00000")]) == []


def test_the_backbones_losses_are_computed_once_per_example_and_data_file(engine, tmp_path, monkeypatch):
    from fedpit.audit.run import backbone_cache_file, backbone_losses, example_losses

    cfg = _cfg(tmp_path, f"model.cache_dir={tmp_path / 'cache'}")
    pool = load_train(cfg)[:8]
    calls = []
    real = engine.example_losses
    monkeypatch.setattr(engine, "example_losses", lambda enc, **kw: calls.append(len(enc)) or real(enc, **kw))
    first = backbone_losses(cfg, engine, pool[:6])
    assert calls == [6] and backbone_cache_file(cfg, engine).is_file()
    with engine.model.disable_adapter():
        direct = example_losses(engine, pool[:6], 4)
    assert sorted(first.values()) == pytest.approx(sorted(direct))
    assert backbone_losses(cfg, engine, pool[:6]) == first and calls == [6, 6]  # (6: the direct call above)
    assert len(backbone_losses(cfg, engine, pool)) == 8 and calls == [6, 6, 2]  # only the two it had not seen
    f = tmp_path / "mine.jsonl"
    f.write_text("".join(json.dumps(e.to_dict()) + "\n" for e in pool))
    other = _cfg(tmp_path, f"model.cache_dir={tmp_path / 'cache'}", f"data.train={f}")
    assert backbone_cache_file(other, engine) != backbone_cache_file(cfg, engine)  # one cache per data file


def test_the_backbones_attack_rows_are_cached_like_its_losses(engine, tmp_path, monkeypatch):
    from fedpit.audit import run

    cfg = _cfg(tmp_path, f"model.cache_dir={tmp_path / 'cache'}", "eval.extraction_max_new_tokens=4")
    pool = load_train(cfg)[:5]
    calls = []
    real = run.attack_rows
    monkeypatch.setattr(run, "attack_rows", lambda c, e, todo: calls.append(len(todo)) or real(c, e, todo))
    first = run.backbone_attack_rows(cfg, engine, pool[:3])
    assert calls == [3] and set(first) == {run._digest(e) for e in pool[:3]}

    def scores(rows):
        return {d: {k: r[k] for k in run.ATTACK_SCORES} for d, r in rows.items()}

    with engine.model.disable_adapter():
        direct = real(cfg, engine, pool)
    assert first == {d: v for d, v in scores(direct).items() if d in first}  # the attack's numbers, through JSON
    stored = run.backbone_cache_file(cfg, engine, "extraction").read_text()
    assert pool[0].instruction not in stored and "continuation" not in stored  # no private text in the cache
    assert run.backbone_attack_rows(cfg, engine, pool) == scores(direct) and calls == [3, 2]
    longer = _cfg(tmp_path, f"model.cache_dir={tmp_path / 'cache'}", "eval.extraction_max_new_tokens=5")
    assert run.backbone_cache_file(longer, engine, "extraction") != run.backbone_cache_file(cfg, engine, "extraction")
