"""Prompt templates and tokenization with the loss on response tokens only."""

from __future__ import annotations

from dataclasses import dataclass, field

IGNORE_INDEX = -100
TEMPLATES = ("alpaca", "chat")

_ALPACA_INPUT = (
    "Below is an instruction that describes a task, paired with an input that provides further context. "
    "Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:\n"
)
_ALPACA_NO_INPUT = (
    "Below is an instruction that describes a task. "
    "Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Response:\n"
)


def build_prompt(instruction: str, input: str = "", *, template: str = "alpaca", tokenizer=None) -> str:
    """The text the model sees before its response."""
    if template == "alpaca":
        if input:
            return _ALPACA_INPUT.format(instruction=instruction, input=input)
        return _ALPACA_NO_INPUT.format(instruction=instruction)
    if template == "chat":
        if tokenizer is None or not getattr(tokenizer, "chat_template", None):
            raise ValueError("the chat template needs a tokenizer that has one; use template 'alpaca'")
        content = f"{instruction}\n\n{input}" if input else instruction
        return tokenizer.apply_chat_template(
            [{"role": "user", "content": content}], tokenize=False, add_generation_prompt=True
        )
    raise ValueError(f"unknown template '{template}' (choose from {', '.join(TEMPLATES)})")


@dataclass(frozen=True)
class Encoded:
    """One tokenized example: ``labels`` is IGNORE_INDEX on the prompt, the token ids on the response + EOS."""

    input_ids: tuple[int, ...]
    labels: tuple[int, ...]
    full_length: int = field(default=0, compare=False)  # tokens before truncation (0: not truncated)

    @property
    def num_target_tokens(self) -> int:
        return sum(1 for t in self.labels if t != IGNORE_INDEX)


def encode(tokenizer, prompt: str, response: str, max_len: int) -> Encoded | None:
    """Tokenize prompt and response separately so the mask boundary is exact, append EOS, truncate to ``max_len``.

    The prompt keeps at most ``max_len // 2`` tokens (its tail) so the response always has room. Returns None when
    nothing of the response would survive.
    """
    p_ids = tokenizer(prompt, add_special_tokens=True).input_ids
    r_ids = tokenizer(response, add_special_tokens=False).input_ids + [tokenizer.eos_token_id]
    full = len(p_ids) + len(r_ids)
    if full > max_len:
        p_ids = p_ids[-max(1, min(len(p_ids), max_len // 2)) :] if len(p_ids) > max_len // 2 else p_ids
        r_ids = r_ids[: max_len - len(p_ids)]
    if not r_ids:
        return None
    return Encoded(tuple(p_ids + r_ids), tuple([IGNORE_INDEX] * len(p_ids) + r_ids), full if full > max_len else 0)


def encode_example(tokenizer, example, *, template: str = "alpaca", max_len: int = 512) -> Encoded | None:
    prompt = build_prompt(example.instruction, example.input, template=template, tokenizer=tokenizer)
    return encode(tokenizer, prompt, example.output, max_len)
