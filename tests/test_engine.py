import contextlib
import math

import numpy as np
import pytest
import torch

from fedpit.adapters import max_abs_diff
from fedpit.backbone import load_backbone
from fedpit.config import LoraConfig
from fedpit.data import Example, load_demo
from fedpit.engine import Engine, cosine_lr, make_batches
from fedpit.prompts import IGNORE_INDEX, build_prompt, encode_example


@pytest.fixture(scope="module")
def engine(tiny_model_path):
    bb = load_backbone(tiny_model_path, dtype="fp32")
    return Engine(bb, LoraConfig(r=4, alpha=8, dropout=0.0), max_seq_len=128, seed=0)


def test_loss_mask_covers_exactly_the_response_and_eos(engine):
    tok = engine.tokenizer
    ex = Example(instruction="Explain gout briefly.", input="Age 50", output="Gout is a form of arthritis.")
    enc = encode_example(tok, ex, template="alpaca", max_len=128)
    prompt_ids = tok(build_prompt(ex.instruction, ex.input), add_special_tokens=True).input_ids
    resp_ids = tok(ex.output, add_special_tokens=False).input_ids
    n = len(prompt_ids)
    assert list(enc.input_ids[:n]) == prompt_ids
    assert all(t == IGNORE_INDEX for t in enc.labels[:n])
    assert list(enc.labels[n:]) == resp_ids + [tok.eos_token_id]
    assert enc.num_target_tokens == len(resp_ids) + 1


def test_truncation_keeps_room_for_the_response(engine):
    ex = Example(instruction="word " * 300, output="short answer")
    enc = encode_example(engine.tokenizer, ex, max_len=64)
    assert len(enc.input_ids) <= 64 and enc.num_target_tokens >= 3


def test_response_only_loss_matches_transformers_loss(engine):
    """Our LM-head-on-response-positions loss equals HF's full causal-LM loss with the same labels."""
    encs = engine.encode(load_demo("train")[:3])
    engine.load_adapter(engine.initial_adapter)
    ids, labels, mask = engine._collate(encs)
    with torch.no_grad():
        ours, _ = engine._token_losses(ids, labels, mask)
        hf = engine.model(input_ids=ids, attention_mask=mask, labels=labels).loss
    assert float(ours.mean()) == pytest.approx(float(hf), rel=1e-5)
    per = engine.example_losses(encs)
    assert engine.mean_loss(encs) == pytest.approx(
        sum(p * e.num_target_tokens for p, e in zip(per, encs)) / sum(e.num_target_tokens for e in encs), rel=1e-5
    )


def test_prompt_tokens_do_not_change_the_loss_target(engine):
    """Changing only the prompt changes context but never adds prompt tokens to the loss."""
    a = engine.encode([Example(instruction="Say hello.", output="Hello there.")])[0]
    b = engine.encode([Example(instruction="Say hello to the whole clinic team now.", output="Hello there.")])[0]
    assert a.num_target_tokens == b.num_target_tokens


def test_training_lowers_the_loss_and_is_deterministic(engine):
    data = load_demo("train")[:8]
    enc = engine.encode(data)
    engine.load_adapter(engine.initial_adapter)
    before = engine.mean_loss(enc)
    stats = engine.train(data, lr=5e-3, steps=15, batch_size=4, seed=1)
    after = engine.mean_loss(enc)
    first = engine.adapter_state()
    assert after < before - 0.05, (before, after)
    assert stats.steps == 15 and stats.target_tokens > 0 and stats.tokens >= stats.target_tokens
    engine.load_adapter(engine.initial_adapter)
    engine.train(data, lr=5e-3, steps=15, batch_size=4, seed=1)
    assert max_abs_diff(engine.adapter_state(), first) == 0.0
    engine.load_adapter(engine.initial_adapter)
    engine.train(data, lr=5e-3, steps=15, batch_size=4, seed=2)
    assert max_abs_diff(engine.adapter_state(), first) > 0.0


def test_epochs_and_grad_accum_count_steps(engine):
    data = load_demo("train")[:10]
    engine.load_adapter(engine.initial_adapter)
    st = engine.train(data, lr=1e-3, epochs=2, batch_size=2, grad_accum=2, seed=0)
    assert st.steps == math.ceil(2 * 5 / 2)
    assert st.examples_seen == st.steps * 4


def test_load_adapter_round_trip(engine):
    s = {k: v + 0.5 for k, v in engine.initial_adapter.items()}
    engine.load_adapter(s)
    assert max_abs_diff(engine.adapter_state(), s) == 0.0
    with pytest.raises(ValueError, match="keys"):
        engine.load_adapter({**s, "base_model.model.nope.lora_A.weight": torch.zeros(1)})


def test_cosine_schedule():
    assert cosine_lr(0, 10, 1e-3, 1e-6) == pytest.approx(1e-3)
    assert cosine_lr(5, 10, 1e-3, 1e-6) == pytest.approx(1e-6 + 0.5 * (1e-3 - 1e-6))
    assert cosine_lr(10, 10, 1e-3, 1e-6) == pytest.approx(1e-6)
    lrs = [cosine_lr(r, 6, 1e-3, 0) for r in range(6)]
    assert lrs == sorted(lrs, reverse=True)


def test_length_grouped_batches_cover_everything_once_and_cut_padding():
    rng = np.random.default_rng(0)
    lengths = rng.integers(10, 400, size=200).tolist()
    batches = make_batches(lengths, 4, np.random.default_rng(1))
    flat = sorted(i for b in batches for i in b)
    assert flat == list(range(200))
    plain = make_batches(lengths, 4, np.random.default_rng(1), group_by_length=False)

    def pad(bs):
        return sum(max(lengths[i] for i in b) * len(b) - sum(lengths[i] for i in b) for b in bs)

    assert pad(batches) < 0.5 * pad(plain)


def test_gguf_fingerprint_follows_content_not_install_time(tmp_path):
    """A reinstalled model package (same file, new mtime) reuses the cached conversion; other bytes do not."""
    import os

    from fedpit.backbone import _fingerprint

    f = tmp_path / "m.gguf"
    f.write_bytes(bytes(range(256)) * 10000)
    fp = _fingerprint(f)
    os.utime(f, (1, 1))
    assert _fingerprint(f) == fp
    f.write_bytes(bytes(range(256)) * 9999 + bytes(255) + b"x")
    assert _fingerprint(f) != fp


def test_generation_folds_lora_in_and_restores_the_backbone_bit_for_bit(engine):
    from fedpit.generate import generate, lora_merged

    engine.load_adapter(engine.initial_adapter)
    engine.train(load_demo("train")[:8], lr=5e-2, steps=2, batch_size=4, seed=0)  # B != 0: a real delta
    model = engine.model
    base = {k: v.clone() for k, v in engine.backbone.model.state_dict().items() if "lora_" not in k}
    ids = engine.tokenizer(["### Instruction:\nName a vitamin.\n\n### Response:\n"], return_tensors="pt").input_ids
    with torch.no_grad():
        unmerged = model(input_ids=ids).logits
        with lora_merged(model):
            assert any(m.merged for m in model.modules() if hasattr(m, "merged_adapters"))
            merged = model(input_ids=ids).logits
        with model.disable_adapter(), lora_merged(model):  # adapters off: nothing is folded in
            plain = model(input_ids=ids).logits
    assert torch.allclose(merged, unmerged, atol=1e-4) and not torch.allclose(plain, unmerged, atol=1e-4)
    with pytest.raises(RuntimeError), lora_merged(model):
        raise RuntimeError("a failure while decoding")
    prompts = ["### Instruction:\nName a vitamin.\n\n### Response:\n", "### Instruction:\nSay hi.\n\n### Response:\n"]
    assert generate(model, engine.tokenizer, prompts, max_new_tokens=6) == generate(
        model, engine.tokenizer, prompts, max_new_tokens=6, merge_lora=False
    )
    after = engine.backbone.model.state_dict()
    assert all(torch.equal(base[k], after[k]) for k in base)  # no rounding drift left in the frozen weights
    # finished: the text ended by itself (EOS or a stop string), not at the token cap
    texts, done = generate(model, engine.tokenizer, prompts, max_new_tokens=3, return_finished=True)
    assert done == [False, False]  # a random model does not say EOS within 3 tokens
    again, done = generate(
        model, engine.tokenizer, prompts, max_new_tokens=3, stop_strings=[texts[0]], return_finished=True
    )
    assert done[0] and again[0] == "" and again[1] == texts[1]
    assert not any(m.merged for m in model.modules() if hasattr(m, "merged_adapters"))


def test_decode_attention_equals_sdpa_for_one_query_with_grouped_heads_and_padding():
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    from fedpit.generate import decode_attention

    torch.manual_seed(0)
    module = torch.nn.Module()
    module.num_key_value_groups, module.is_causal = 3, True
    q, k, v = torch.randn(4, 6, 1, 8), torch.randn(4, 2, 11, 8), torch.randn(4, 2, 11, 8)
    mask = torch.ones(4, 1, 1, 11, dtype=torch.bool)
    mask[0, ..., :5] = False  # a left-padded row
    mask[2, ..., -3:] = False  # unused slots of a static cache
    ours, _ = decode_attention(module, q, k, v, mask, scaling=8**-0.5)
    ref, _ = sdpa_attention_forward(module, q, k, v, mask, scaling=8**-0.5)
    assert ours.shape == ref.shape == (4, 1, 6, 8) and torch.allclose(ours, ref, atol=1e-5)
    additive = torch.zeros(mask.shape).masked_fill(~mask, float("-inf"))
    assert torch.allclose(decode_attention(module, q, k, v, additive, scaling=8**-0.5)[0], ref, atol=1e-5)
    # more than one query (prefill) is SDPA's own result
    q2 = torch.randn(4, 6, 3, 8)
    assert torch.equal(decode_attention(module, q2, k, v, None)[0], sdpa_attention_forward(module, q2, k, v, None)[0])


@contextlib.contextmanager
def _hf_default_decoding(model):
    yield {}


def test_fast_decoding_gives_hf_defaults_answers_and_restores_the_model(engine, monkeypatch):
    from fedpit import generate as gen

    model = engine.model
    seen = []
    layer = next(m for m in model.modules() if type(m).__name__ == "LlamaAttention")
    hook = layer.register_forward_pre_hook(lambda m, *a: seen.append(m.config._attn_implementation))
    prompts = ["### Instruction:\nName a vitamin.\n\n### Response:\n", "Hi", "### Instruction:\nSay hi.\n\n"]
    try:
        fast = gen.generate(model, engine.tokenizer, prompts, max_new_tokens=12, repetition_penalty=1.2)
        assert set(seen) == {gen.DECODE_ATTENTION}  # prefill and every step went through the fast path
        seen.clear()
        monkeypatch.setattr(gen, "fast_decoding", _hf_default_decoding)  # HF generate's own cache and attention
        plain = gen.generate(model, engine.tokenizer, prompts, max_new_tokens=12, repetition_penalty=1.2)
        assert set(seen) == {"sdpa"}
    finally:
        hook.remove()
    assert fast == plain and all(fast)
    assert model.get_base_model().config._attn_implementation == "sdpa"  # training and scoring are untouched
