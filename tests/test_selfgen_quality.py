"""Synthetic-data quality measures, selection, chat-format generation, budget parity."""

import json
import math

import numpy as np
import pytest

from fedpit import selfgen
from fedpit.data import Example
from fedpit.selfgen import (
    SelfGenReport,
    SelfGenSettings,
    answer_relevance,
    assess_and_select,
    distinct_ratio,
    instruction_prompt,
    measure_rows,
    on_task_relevance,
    private_closeness,
    self_generate,
    self_rouge_l,
    summary_line,
    top_k,
)

LOCAL = [
    Example(instruction=q, output=a, category="c")
    for q, a in [
        (
            "What are the early symptoms of type 2 diabetes?",
            "Early signs include thirst, frequent urination, tiredness and blurred vision; many people notice nothing.",
        ),
        (
            "How is high blood pressure treated in older adults?",
            "Treatment starts with less salt, exercise and weight loss, then medicines such as ACE inhibitors "
            "if needed.",
        ),
        (
            "What causes iron deficiency anemia?",
            "Blood loss, low iron intake and poor absorption are the usual causes; heavy periods are common in women.",
        ),
        (
            "When should a fever in a child be seen by a doctor?",
            "See a doctor for a fever in a baby under three months, a fever over five days, or a child who is "
            "very drowsy.",
        ),
    ]
]


# ------------------------------------------------------------------------------------------- measures (constructed)
def test_on_task_instruction_is_closer_to_local_tasks_than_an_off_task_one():
    on = Example(instruction="What are the warning signs of a stroke?", output="x")
    off = Example(instruction="Write a short poem about a sailing boat at sunset.", output="x")
    rows = measure_rows([on, off], LOCAL, SelfGenSettings())
    assert rows[0]["on_task"] > rows[1]["on_task"] + 0.15


def test_answer_relevance_prefers_a_response_about_its_instruction():
    q = "How can a person lower their cholesterol?"
    good = Example(
        instruction=q, output="Eat more fibre and less saturated fat, exercise, and take statins if advised."
    )
    bad = Example(instruction=q, output="The train to the city leaves at nine and the museum opens on Sundays.")
    rows = measure_rows([good, bad], LOCAL, SelfGenSettings())
    assert rows[0]["answer_relevance"] > rows[1]["answer_relevance"] + 0.2


def test_closeness_to_private_text_flags_a_copied_response_and_not_a_fresh_one():
    copied, fresh = LOCAL[2].output, "Drink water through the day, rest, and see a nurse if a headache lasts long."
    c, f = private_closeness([copied, fresh], [e.output for e in LOCAL])
    assert c == pytest.approx(1.0) and f < 0.3


def test_vector_measures_on_exact_vectors():
    local = np.array([[1.0, 0.0], [0.0, 1.0]])
    assert on_task_relevance(np.array([[2.0, 0.0], [1.0, 1.0]]), local) == pytest.approx([1.0, math.sqrt(0.5)])
    assert answer_relevance(np.array([[1.0, 0.0], [1.0, 0.0]]), np.array([[3.0, 0.0], [0.0, 1.0]])) == pytest.approx(
        [1.0, 0.0]
    )
    assert on_task_relevance(np.zeros((0, 2)), local) == []


def test_diversity_measures():
    assert distinct_ratio(["Do A now.", "do  a now.", "Do B."]) == pytest.approx(2 / 3)
    assert self_rouge_l(["same words here", "same words here"]) == pytest.approx(1.0)
    assert self_rouge_l(["alpha beta gamma", "delta epsilon zeta"]) == 0.0
    assert math.isnan(self_rouge_l(["one"])) and math.isnan(distinct_ratio([]))


# ------------------------------------------------------------------------------------------- selection
def test_top_k_keeps_exactly_the_best_deterministically():
    scores = [0.9, 0.2, float("nan"), 0.2, 0.5]
    assert top_k(scores, 3, lower_is_better=True) == [1, 3, 4]  # tie by index, nan last
    assert top_k(scores, 2, lower_is_better=False) == [0, 4]
    assert top_k(scores, 5, lower_is_better=True)[-1] == 2
    assert top_k(scores, 3, lower_is_better=True) == top_k(list(scores), 3, lower_is_better=True)


def _fake_embed(texts):
    """Deterministic 3-d vectors: 'health' words point one way, anything else another."""
    out = []
    for t in texts:
        low = t.lower()
        med = sum(w in low for w in ("symptom", "blood", "fever", "doctor", "treat", "pain", "diabetes", "iron"))
        out.append([1.0 + med, 0.2, 0.1 * (len(t) % 7)])
    return np.asarray(out)


CANDS = [
    Example(instruction=f"Task {i}: explain symptom set {i}.", output=f"Answer {i} " * 5, category="synthetic")
    for i in range(6)
]


@pytest.mark.parametrize("by", ["ifs", "relevance", "first"])
def test_assess_and_select_keeps_the_top_keep_by_the_chosen_score(by):
    cond, uncond = [2.0, 1.0, 3.0, 0.5, 1.5, 2.5], [4.0, 4.0, 3.0, 0.25, 3.0, 5.0]  # IFS .5 .25 1 2 .5 .5
    s = SelfGenSettings()
    rep = SelfGenReport(kept=6)
    kept = assess_and_select(CANDS, LOCAL, s, rep, keep=3, select_by=by, ifs=(cond, uncond), embed=_fake_embed)
    again = assess_and_select(
        CANDS, LOCAL, s, SelfGenReport(), keep=3, select_by=by, ifs=(cond, uncond), embed=_fake_embed
    )
    assert kept == again and len(kept) == 3 == rep.kept and rep.candidates == 6
    if by == "ifs":
        assert kept == [CANDS[1], CANDS[0], CANDS[4]]
    elif by == "relevance":
        scores = [selfgen.relevance_score(r) for r in rep.rows]
        best = sorted(range(6), key=lambda i: (-scores[i], i))[:3]
        assert kept == [CANDS[i] for i in best]
    else:
        assert kept == CANDS[:3]
    assert [r["kept"] for r in rep.rows].count(True) == 3
    d = rep.as_dict(rows=True)
    assert d["candidates"] == 6 and d["kept"] == 3 and d["select_by"] == by and len(d["rows"]) == 6
    assert d["quality"]["n"] == 3 and d["quality_candidates"]["n"] == 6 and "ifs" in d["quality"]
    assert "rows" not in rep.as_dict() and json.dumps(d)
    assert "kept 3/6 by " + by in summary_line(rep.as_dict())


def test_ifs_selection_needs_the_private_losses():
    with pytest.raises(ValueError, match="private"):
        assess_and_select(CANDS, LOCAL, SelfGenSettings(), SelfGenReport(), keep=2, select_by="ifs", embed=_fake_embed)


def test_selection_bits_bound():
    assert math.log2(math.comb(32, 16)) == pytest.approx(29.16, abs=0.01)


# ------------------------------------------------------------------------------------------- the chat format
@pytest.fixture(scope="module")
def tiny(tiny_model_path):
    from fedpit.backbone import load_backbone

    bb = load_backbone(tiny_model_path, dtype="fp32")
    if not getattr(bb.tokenizer, "chat_template", None):  # the fixture saves SmolLM2's tokenizer, which has one
        bb.tokenizer.chat_template = (
            "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}"
            "<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n"
            "{% endif %}"
        )
    return bb


def test_generation_template_auto_follows_the_tokenizer(tiny):
    assert selfgen.generation_template("auto", "alpaca", tiny.tokenizer) == "chat"
    assert selfgen.generation_template("model", "alpaca", tiny.tokenizer) == "alpaca"
    assert selfgen.generation_template("alpaca", "chat", tiny.tokenizer) == "alpaca"

    class Plain:
        chat_template = None

    assert selfgen.generation_template("auto", "alpaca", Plain()) == "alpaca"
    with pytest.raises(ValueError, match="selfgen.template"):
        selfgen.generation_template("llama", "alpaca", tiny.tokenizer)


def test_chat_prompts_keep_the_paper_structure_in_chat_turns(tiny):
    tok = tiny.tokenizer
    p = instruction_prompt(["Do A.", "Do B."], template="chat", tokenizer=tok)
    assert "<|im_start|>user" in p and "Task 1: Do A.\nTask 2: Do B." in p
    assert p.endswith("<|im_start|>assistant\nTask 3:")
    r = selfgen.response_prompt(LOCAL[:1], "What is gout?", template="chat", tokenizer=tok)
    assert r.index(LOCAL[0].instruction) < r.index(LOCAL[0].output) < r.index("What is gout?")
    assert r.count("<|im_start|>assistant") == 2 and r.endswith("<|im_start|>assistant\n")
    assert "###" not in r


def test_self_generate_in_chat_format_on_the_tiny_model(tiny):
    s = SelfGenSettings(
        num_instructions=2, max_instruction_tokens=8, max_response_tokens=8, template="chat", measure=False
    )
    a = self_generate(tiny.model, tiny.tokenizer, LOCAL, s, seed=3)
    b = self_generate(tiny.model, tiny.tokenizer, LOCAL, s, seed=3)
    assert a[0] == b[0] and a[1].as_dict() == b[1].as_dict() and a[1].template == "chat"
    assert 2 <= a[1].generated_instructions <= 6


def test_stop_criterion_is_built_once_and_decodes_the_same(tiny, monkeypatch):
    from fedpit import generate as gen

    assert gen.stop_criteria(tiny.tokenizer, ["\n"]) is gen.stop_criteria(tiny.tokenizer, ["\n"])
    prompts = [instruction_prompt([e.instruction for e in LOCAL])] * 2 + ["Hello there"]
    cached = gen.generate(tiny.model, tiny.tokenizer, prompts, max_new_tokens=12, stop_strings=["\n"])
    new = gen._generate_kwargs

    def hf_builds_it(tokenizer, *args):  # HF generate's own path: the criterion built inside every call
        kw = new(tokenizer, *args[:-1], None)
        return {**kw, "stop_strings": list(args[-1]), "tokenizer": tokenizer}

    monkeypatch.setattr(gen, "_generate_kwargs", hf_builds_it)
    rebuilt = gen.generate(tiny.model, tiny.tokenizer, prompts, max_new_tokens=12, stop_strings=["\n"])
    assert cached == rebuilt


# ------------------------------------------------------------------------------------------- config
@pytest.mark.parametrize("key", ["selfgen.template=llama", "fedpit.select_by=best", "fedpit.shared_budget=more"])
def test_new_settings_are_validated(key):
    from fedpit.config import load_config
    from fedpit.errors import ConfigError

    with pytest.raises(ConfigError, match=key.split("=")[0]):
        load_config(overrides=[key])


def test_tasks_per_call_is_gone_and_a_config_that_sets_it_is_refused_in_one_line(tmp_path, capsys):
    from fedpit.cli import main
    from fedpit.config import load_config
    from fedpit.errors import ConfigError

    f = tmp_path / "old.toml"
    f.write_text("[selfgen]\ntasks_per_call = 4\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="unknown config key 'selfgen.tasks_per_call'"):
        load_config(f)
    assert main(["config", "--config", str(f)]) == 2
    err = capsys.readouterr().err.strip()
    assert "unknown config key 'selfgen.tasks_per_call'" in err and len(err.splitlines()) == 1
