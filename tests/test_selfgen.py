"""Self-generation: parsing, every filter, the Rouge-L threshold, retries and the counts."""

import json

import pytest

from fedpit import selfgen
from fedpit.data import Example
from fedpit.selfgen import (
    SelfGenSettings,
    clean_response,
    instruction_filter,
    instruction_prompt,
    max_rouge_l,
    parse_instruction,
    repeated_ngram_ratio,
    response_filter,
    self_generate,
)

S = SelfGenSettings()
LOCAL = [
    Example(
        instruction=f"Explain condition number {w} in plain words for a patient.",
        output=f"Condition {w} is a common problem that doctors see often and treat with rest and care "
        f"in most cases, with follow up visits.",
        category="c",
    )
    for w in ("alpha", "beta", "gamma", "delta", "epsilon", "zeta", "eta", "theta", "iota", "kappa")
]


def test_instruction_prompt_lists_numbered_tasks_and_leaves_the_next_open():
    p = instruction_prompt(["Do A.", "Do B."])
    assert p.splitlines() == ["Come up with a series of tasks:", "Task 1: Do A.", "Task 2: Do B.", "Task 3:"]


@pytest.mark.parametrize(
    "raw, parsed",
    [
        (" Describe how insulin works.\nTask 10: something else", "Describe how insulin works."),
        ("Task 9: List three causes of anemia.", "List three causes of anemia."),
        ("List risk factors for gout. Task 10: Explain", "List risk factors for gout."),
        ("", None),
        ("   \n  ", None),
        ("Task 9:", None),
    ],
)
def test_parse_instruction(raw, parsed):
    assert parse_instruction(raw) == parsed


@pytest.mark.parametrize(
    "text, reason",
    [
        (None, "unparseable"),
        ("Explain gout", "length"),
        (" ".join(["word"] * 151), "length"),
        ("As an AI model I cannot give advice on this.", "refusal"),
        ("Sorry, but that request is not possible.", "refusal"),
        ("I cannot write about this topic at all.", "refusal"),
        ("I'm sorry, I do not know this one.", "refusal"),
        ("Describe the stages of wound healing and what a patient should", "truncated"),
        ("1. Describe the stages of wound healing.", "bad_start"),
        ("- Describe the stages of wound healing.", "bad_start"),
        ("Explain condition number alpha in plain words for a patient.", "similar"),
        ("Describe the stages of wound healing after surgery.", None),
    ],
)
def test_instruction_filters(text, reason):
    assert instruction_filter(text, [e.instruction for e in LOCAL], S) == reason


def test_rouge_threshold_is_strictly_greater_than():
    ref = "Alpha b1 c1 d1 e1 f1 g1 h1 i1 j1."
    seven = "Alpha b1 c1 d1 e1 f1 g1 x y z."  # LCS 7 of 10 on both sides: F = 0.7 exactly
    eight = "Alpha b1 c1 d1 e1 f1 g1 h1 y z."
    assert max_rouge_l(seven, [ref]) == pytest.approx(0.7)
    assert max_rouge_l(eight, [ref]) == pytest.approx(0.8)
    assert instruction_filter(seven, [ref], S) is None  # 0.7 is kept: the rule is "> 0.7"
    assert instruction_filter(eight, [ref], S) == "similar"
    assert instruction_filter(eight, [ref], SelfGenSettings(rouge_threshold=0.8)) is None
    assert max_rouge_l("anything", []) == 0.0


def test_response_filters_and_degeneracy():
    local = [e.output for e in LOCAL]
    assert response_filter("", local, S) == "response_empty"
    assert response_filter("Too short.", local, S) == "response_short"
    loop = "take the pill " * 12
    assert repeated_ngram_ratio(loop) > 0.6 and response_filter(loop, local, S) == "response_degenerate"
    assert response_filter(LOCAL[0].output, local, S) == "response_copy"
    ok = "Rest the joint, use ice for short periods, and take an anti-inflammatory if your doctor agrees."
    assert response_filter(ok, local, S) is None
    assert repeated_ngram_ratio("a b c d e f") == 0.0


@pytest.mark.parametrize(
    "cut, trimmed",
    [
        ("Rest the knee. Use ice twice a day. Then take the", "Rest the knee. Use ice twice a day."),
        ('He said "rest it." Then he', 'He said "rest it."'),
        ("Doses of 2.5 mg are common and", ""),  # a decimal point is not a sentence end
        ("No sentence ends here at all", ""),
    ],
)
def test_a_cut_off_response_is_trimmed_to_its_last_complete_sentence(cut, trimmed):
    assert selfgen.trim_cut_response(cut) == trimmed


def test_responses_cut_off_by_the_token_cap_are_trimmed_or_dropped(monkeypatch):
    good = "Describe the stages of wound healing after minor surgery."
    other = "List warning signs of dehydration in older adults at home."
    full = "Wounds pass through bleeding control and inflammation. New tissue then grows and remodels over weeks."
    cut = (full + " After that the scar", False)
    short_cut = ("Wounds heal in stages. The first is", False)
    out, report, _ = _run(monkeypatch, [good, other], [cut, short_cut, full], num_instructions=2)
    # the first is trimmed back to its complete sentences; the second leaves 4 words, dropped as truncated, retried
    assert [e.output for e in out] == [full, full] and report.trimmed == 2
    assert report.dropped["response_truncated"] == 1 and report.dropped["response_short"] == 0
    assert report.as_dict()["trimmed"] == 2
    # a text that ended by itself is never trimmed, even without a full stop
    out, report, _ = _run(monkeypatch, [good], ["Rest, fluids and a clean dressing changed every day"])
    assert out[0].output.endswith("every day") and report.trimmed == 0


def test_clean_response_cuts_new_sections():
    assert clean_response("Drink water.\n\n### Instruction:\nNext") == "Drink water."
    assert clean_response("Drink water.\nTask 3: more") == "Drink water."


class Scripted:
    """A stand-in for the model: returns scripted outputs per phase and records every prompt."""

    def __init__(self, instructions, responses):
        self.instructions, self.responses, self.prompts = list(instructions), list(responses), []

    def __call__(self, model, tok, prompts, s, max_new_tokens, stop, seed, return_finished=False):
        self.prompts.append(prompts)
        source = self.instructions if stop == ["\n"] else self.responses
        outs = [source.pop(0) if source else "" for _ in prompts]
        # a scripted (text, False) is a text cut off by the token cap; anything else ended by itself
        texts = [o[0] if isinstance(o, tuple) else o for o in outs]
        return (texts, [not isinstance(o, tuple) or o[1] for o in outs]) if return_finished else texts


def _run(monkeypatch, instructions, responses, **kw):
    fake = Scripted(instructions, responses)
    monkeypatch.setattr(selfgen, "_gen", fake)
    s = SelfGenSettings(**{"num_instructions": 3, **kw})
    out, report = self_generate(None, None, LOCAL, s, seed=0)
    return out, report, fake


def test_failed_slots_retry_with_fresh_demonstrations_at_most_three_times(monkeypatch):
    out, report, fake = _run(monkeypatch, ["Sorry, I cannot do that for you."] * 20, [])
    assert out == [] and report.kept == 0
    assert report.generated_instructions == 9 and report.dropped["refusal"] == 9
    assert [len(p) for p in fake.prompts] == [3, 3, 3]
    assert fake.prompts[0][0] != fake.prompts[1][0]  # resampled demonstrations


def test_counts_and_duplicates_within_a_round(monkeypatch):
    good = "Describe the stages of wound healing after minor surgery."
    other = "List warning signs of dehydration in older adults at home."
    answer = "Wounds pass through bleeding control, inflammation, new tissue growth and remodelling over weeks."
    answer2 = "Watch for dark urine, dizziness, confusion, a dry mouth and less urination than usual each day."
    instructions = [good, good, "ok", other, good]
    out, report, _ = _run(monkeypatch, instructions, [answer, "", answer2], max_attempts=3)
    # attempt 1: slot 0 accepted, slot 1 repeats it (similar), slot 2 too short; attempt 2: slot 1 -> other
    # (accepted), slot 2 -> good again (similar); attempt 3: slot 2 gets nothing (unparseable) and is dropped
    assert report.generated_instructions == 6
    assert report.dropped["similar"] == 2 and report.dropped["length"] == 1 and report.dropped["unparseable"] == 1
    # responses: first ok, second empty -> retried and answered
    assert report.generated_responses == 3 and report.dropped["response_empty"] == 1
    assert [e.instruction for e in out] == [good, other] and report.kept == 2
    assert all(e.category == "synthetic" and e.input == "" for e in out)
    d = report.as_dict()
    assert d["kept"] == 2 and set(d["dropped"]) == set(selfgen.FILTERS)


def test_response_prompt_shows_local_examples_then_the_new_instruction(monkeypatch):
    good = "Describe the stages of wound healing after minor surgery."
    _, _, fake = _run(
        monkeypatch,
        [good, "x", "y", "z", "w", "v", "u", "t", "s"],
        ["A long enough answer " * 3],
        num_instructions=1,
        response_demos=1,
    )
    prompt = fake.prompts[-1][0]
    assert prompt.rstrip().endswith("### Response:") and good in prompt
    assert any(e.output in prompt for e in LOCAL)


def test_self_generate_on_the_tiny_model_is_deterministic(tiny_model_path):
    from fedpit.backbone import load_backbone

    bb = load_backbone(tiny_model_path, dtype="fp32")
    s = SelfGenSettings(num_instructions=2, max_instruction_tokens=8, max_response_tokens=8)
    a = self_generate(bb.model, bb.tokenizer, LOCAL, s, seed=3)
    b = self_generate(bb.model, bb.tokenizer, LOCAL, s, seed=3)
    assert a[0] == b[0] and a[1].as_dict() == b[1].as_dict()
    rep = a[1]
    n_instr_filters = selfgen.FILTERS.index("response_empty")
    accepted = rep.generated_instructions - sum(rep.dropped[k] for k in selfgen.FILTERS[:n_instr_filters])
    assert 2 <= rep.generated_instructions <= 6  # 2 slots, at most 3 attempts each
    assert rep.kept == len(a[0]) <= accepted <= 2
    assert rep.generated_responses >= accepted
    assert rep.generated_responses - rep.kept == sum(rep.dropped[k] for k in selfgen.FILTERS[n_instr_filters:])


def test_public_data_replaces_generation_with_the_same_number_of_public_examples(tmp_path):
    f = tmp_path / "public.jsonl"
    f.write_text(
        "\n".join(
            json.dumps({"instruction": f"Public question {i}?", "output": f"Public answer {i}."}) for i in range(20)
        )
    )
    s = SelfGenSettings(num_instructions=5, public_data=str(f))
    a, rep = self_generate(None, None, LOCAL, s, seed=1)
    b, _ = self_generate(None, None, LOCAL, s, seed=1)
    assert a == b and len(a) == 5 == rep.kept and all(e.category == "public" for e in a)
    assert len({e.instruction for e in a}) == 5
    c, _ = self_generate(None, None, LOCAL, s, seed=2)
    assert c != a


def test_a_missing_public_file_fails_before_the_run_starts(tmp_path, capsys):
    from fedpit.cli import main

    code = main(
        ["run", "--set", f"selfgen.public_data={tmp_path / 'none.json'}", "--set", f"output_dir={tmp_path / 'r'}"]
    )
    assert code == 2 and "none.json" in capsys.readouterr().err and not (tmp_path / "r").exists()


TEMPLATED = [
    Example(
        instruction="Answer this question truthfully",
        input=f"What are the symptoms of disease {w}?",
        output=f"Disease {w} causes fever, fatigue and aches that last several days in most adults.",
    )
    for w in ("alpha", "beta", "gamma", "delta", "epsilon", "zeta", "eta", "theta", "iota", "kappa")
]


def test_task_text_shows_the_input_when_the_instruction_is_a_template(monkeypatch):
    # a template instruction with the question in the input: the demonstrations carry the questions...
    assert selfgen.task_texts(TEMPLATED) == [f"Answer this question truthfully {e.input}" for e in TEMPLATED]
    new = "Answer this question truthfully What causes chronic kidney disease in adults?"
    fake = Scripted([new], ["Diabetes and high blood pressure are the two leading causes in most adults."])
    monkeypatch.setattr(selfgen, "_gen", fake)
    out, report = self_generate(None, None, TEMPLATED, SelfGenSettings(num_instructions=1), seed=0)
    assert "What are the symptoms of disease" in fake.prompts[0][0]
    assert [e.instruction for e in out] == [new] and report.dropped["similar"] == 0
    # ...whereas the instruction alone would make every new question "similar" to the template
    with pytest.raises(ValueError, match="task_text"):
        selfgen.task_texts(TEMPLATED, "question")
    only = selfgen.task_texts(TEMPLATED, "instruction")
    assert set(only) == {"Answer this question truthfully"}
    # distinct instructions keep the paper's instruction-only prompt, inputs or not
    assert selfgen.task_texts(LOCAL) == [e.instruction for e in LOCAL]
    mixed = [Example(instruction=e.instruction, input="Age 40", output=e.output) for e in LOCAL]
    assert selfgen.task_texts(mixed) == [e.instruction for e in LOCAL]
    assert selfgen.task_texts(mixed, "instruction+input")[0] == f"{LOCAL[0].instruction} Age 40"


def test_task_text_is_validated_in_the_config():
    from fedpit.config import load_config
    from fedpit.errors import ConfigError

    with pytest.raises(ConfigError, match="selfgen.task_text"):
        load_config(overrides=["selfgen.task_text=question"])
