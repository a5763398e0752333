"""Offline metrics and the extraction attack's scorer."""

import pytest
import torch

from fedpit.data import Example
from fedpit.metrics import embedding_cosine, exact_match, rouge_l
from fedpit.privacy import extraction_attack, sample_targets
from fedpit.prompts import encode_example

SECRET = Example(
    instruction="What is the patient's record number?", output="The record number is 4417 and the ward is seven north."
)
OTHER = Example(
    instruction="Describe how to treat a minor burn at home.",
    output="Cool the burn under running water for twenty minutes and cover it loosely.",
)


def test_rouge_l_on_known_pairs():
    assert rouge_l("the cat sat on the mat", "the cat sat on the mat") == 1.0
    assert rouge_l("dogs bark loudly", "the cat sat on the mat") == 0.0
    # LCS "the cat the mat" = 4 of 6 tokens on both sides
    assert rouge_l("the cat lay by the mat", "the cat sat on the mat") == pytest.approx(4 / 6)
    assert rouge_l("", "anything") == 0.0


def test_exact_match_normalizes_whitespace_and_allows_a_longer_continuation():
    assert exact_match("The  record\nnumber is 4417. More text", "The record number is 4417.")
    assert not exact_match("The record number is 4418.", "The record number is 4417.")
    assert not exact_match("anything", "")


def test_embedding_cosine_with_a_fake_and_the_real_embedder():
    fake = lambda texts: [[1.0, 0.0] if "a" in t else [0.0, 1.0] for t in texts]  # noqa: E731
    assert embedding_cosine(["a", "b"], ["a", "a"], embed=fake) == pytest.approx([1.0, 0.0])
    para, unrel = embedding_cosine(
        ["Drink plenty of water when you have a fever.", "The stock market fell today."],
        ["Stay well hydrated while feverish.", "Stay well hydrated while feverish."],
    )
    assert para > 0.5 > unrel


def test_sample_targets_is_seeded_and_bounded():
    xs = list(range(50))
    assert sample_targets(xs, 10, 1) == sample_targets(xs, 10, 1) != sample_targets(xs, 10, 2)
    assert len(sample_targets(xs, 10, 1)) == 10 and sample_targets(xs, 0, 1) == xs


@pytest.fixture(scope="module")
def memorized(tiny_model_path):
    """The tiny LLaMA fully fine-tuned on one secret example until it reproduces it."""
    from transformers import AutoModelForCausalLM

    from fedpit.backbone import load_tokenizer

    tok = load_tokenizer(tiny_model_path)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_path, dtype=torch.float32)
    ids = torch.tensor([encode_example(tok, SECRET, max_len=128).input_ids])
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    model.train()
    for _ in range(60):
        model(input_ids=ids, labels=ids).loss.backward()
        opt.step()
        opt.zero_grad()
    model.eval()
    return model, tok


def test_a_memorized_example_scores_one_and_an_unrelated_one_near_zero(memorized):
    model, tok = memorized
    r = extraction_attack(model, tok, [SECRET, OTHER], max_new_tokens=24, suffix_tokens=10)
    secret, other = r.per_example
    assert secret["rouge_l"] == 1.0 and secret["exact"] and secret["prefix_exact"]
    assert other["rouge_l"] < 0.2 and not other["exact"] and not other["prefix_exact"]
    assert r.summary() == {
        "n": 2,
        "rouge_l": pytest.approx(0.5 + other["rouge_l"] / 2),
        "exact": 0.5,
        "prefix_exact": 0.5,
    }


def test_the_token_prefix_attack_reaches_the_end_of_text_and_stops_a_row_where_it_leaves_its_suffix(memorized):
    """A suffix running to the response's end (its EOS) is matched by a memorized example (the model must be free to
    end the text), and a row stops at the first token that leaves its suffix: the answer is already known."""
    from fedpit.privacy import _greedy_from_ids

    model, tok = memorized
    r = extraction_attack(model, tok, [SECRET, OTHER], max_new_tokens=24, suffix_tokens=1000)
    assert [row["prefix_exact"] for row in r.per_example] == [True, False]
    ids = [list(encode_example(tok, e, max_len=128).input_ids) for e in (SECRET, OTHER)]
    prefixes, suffixes = [x[: len(x) // 2] for x in ids], [x[len(x) // 2 :] for x in ids]
    assert suffixes[0][-1] == tok.eos_token_id
    got = _greedy_from_ids(model, tok, prefixes, suffixes, batch_size=2)
    assert got[0][: len(suffixes[0])] == suffixes[0]
    first_miss = next(t for t, (a, b) in enumerate(zip(got[1], suffixes[1])) if a != b)
    assert all(t == tok.pad_token_id for t in got[1][first_miss + 1 :])  # nothing decoded after it left
