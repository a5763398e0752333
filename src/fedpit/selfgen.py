"""Self-generation (FedPIT step 1): the shared global model writes new tasks and answers from local demonstrations.

Phase A writes new *instructions*: a prompt lists k tasks sampled from the client's own data as numbered tasks
and ends with an open task number; the model completes it. A task is the example's instruction, or its instruction
and input on one line when the instructions are a fixed template such as "Answer this question truthfully" with the
question in the input (``task_text = "auto"``; medical QA sets look like that). Candidates are filtered (unparseable,
too short or long, cut off mid-sentence by the token cap, refusals, a non-letter start, Rouge-L F > 0.7 against any
local task or any task already accepted this round); a failed slot is retried with freshly sampled demonstrations,
at most ``max_attempts`` times.

Phase B writes *responses*: an in-context prompt with sampled local examples (instruction, input, response) in the
training template, then the new instruction. Decoding is greedy with a repetition penalty (the seed article's
penalty; 1.0 turns it off) by default. Responses that are empty, too short, degenerate (many repeated 3-grams) or
copy a local response (Rouge-L F > 0.7, which is also a leak guard) are retried the same way, then dropped.

Generation is batched (left padding, KV cache, per-sequence stop) and runs on whatever adapter the caller loaded:
callers load the *global* adapter, never a private one.
"""

from __future__ import annotations

import dataclasses
import functools
import re
from collections import Counter
from dataclasses import dataclass, field

import numpy as np
from rouge_score import rouge_scorer

from .config import TASK_TEXTS, SelfGenSettings  # the [selfgen] section (config stays torch-free)
from .data import Example
from .generate import generate
from .prompts import build_prompt

SYNTHETIC = "synthetic"
REFUSAL_PREFIXES = ("as a", "as an", "sorry", "i'm sorry", "i am sorry", "i cannot", "i can't", "i can not",
                    "i apologize", "i'm unable", "i am unable", "unfortunately", "i do not", "i don't")
FILTERS = ("unparseable", "length", "truncated", "refusal", "bad_start", "similar", "response_empty", "response_short",
           "response_degenerate", "response_copy")


def task_texts(local: list[Example], mode: str = "auto") -> list[str]:
    """One line per local example, the task as Phase A shows it and as new tasks are compared against.

    ``auto`` shows instruction and input when fewer than half of the local instructions are distinct (a template
    instruction carries no task of its own), else the instruction alone (the paper's Self-Instruct prompt).
    """
    if mode not in TASK_TEXTS:
        raise ValueError(f"selfgen.task_text must be one of {', '.join(TASK_TEXTS)}, not {mode!r}")
    if mode == "auto":
        distinct = len({e.instruction.strip().lower() for e in local})
        mode = "instruction+input" if local and distinct < 0.5 * len(local) else "instruction"
    if mode == "instruction":
        return [e.instruction for e in local]
    return [" ".join(f"{e.instruction.strip()} {e.input.strip()}".split()) if e.input.strip() else e.instruction
            for e in local]


@dataclass
class SelfGenReport:
    """What happened to every attempt: generated, dropped by each filter, kept."""

    generated_instructions: int = 0
    generated_responses: int = 0
    dropped: Counter = field(default_factory=Counter)
    kept: int = 0

    def as_dict(self) -> dict:
        return {"generated_instructions": self.generated_instructions, "generated_responses": self.generated_responses,
                "dropped": {k: self.dropped.get(k, 0) for k in FILTERS}, "kept": self.kept}


_scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)


def max_rouge_l(candidate: str, references) -> float:
    """Highest Rouge-L F1 of ``candidate`` against any reference (0.0 when there are none)."""
    best = 0.0
    for ref in references:
        best = max(best, _scorer.score(ref, candidate)["rougeL"].fmeasure)
        if best >= 1.0:
            break
    return best


def instruction_prompt(demos: list[str]) -> str:
    lines = ["Come up with a series of tasks:"]
    lines += [f"Task {i}: {d.strip()}" for i, d in enumerate(demos, 1)]
    lines.append(f"Task {len(demos) + 1}:")
    return "\n".join(lines)


_TASK_PREFIX = re.compile(r"^\s*(task\s*\d+\s*[:.)-]\s*)+", re.IGNORECASE)


def parse_instruction(text: str) -> str | None:
    """The completed task: the first line of the continuation, without any echoed 'Task N:' prefix."""
    if not text or not text.strip():
        return None
    first = text.strip().splitlines()[0]
    first = _TASK_PREFIX.sub("", first).strip()
    first = re.split(r"\s+Task\s*\d+\s*:", first)[0].strip()
    return first or None


def instruction_filter(text: str | None, references, s: SelfGenSettings) -> str | None:
    """The name of the first filter a candidate instruction fails, or None when it passes."""
    if text is None:
        return "unparseable"
    n = len(text.split())
    if n < s.min_words or n > s.max_words:
        return "length"
    if not text.rstrip().endswith((".", "?", "!", ":", '"', ")")):
        return "truncated"  # cut off by the token cap mid-sentence
    low = text.lower()
    if low.startswith(REFUSAL_PREFIXES):
        return "refusal"
    if not text[0].isalpha():
        return "bad_start"
    if max_rouge_l(text, references) > s.rouge_threshold + 1e-9:  # tolerance: F1 of exactly 0.7 is kept
        return "similar"
    return None


def repeated_ngram_ratio(text: str, n: int = 3) -> float:
    words = text.lower().split()
    grams = [tuple(words[i:i + n]) for i in range(len(words) - n + 1)]
    if not grams:
        return 0.0
    return 1.0 - len(set(grams)) / len(grams)


def clean_response(text: str) -> str:
    """Cut a response where the model starts a new prompt section."""
    return re.split(r"\n?#{2,}\s|\n\s*Task\s*\d+\s*:|\n\s*Instruction\s*:", text)[0].strip()


def response_filter(text: str, local_responses, s: SelfGenSettings) -> str | None:
    if not text:
        return "response_empty"
    if len(text.split()) < s.min_response_words:
        return "response_short"
    if repeated_ngram_ratio(text) > s.max_repeat_ratio:
        return "response_degenerate"
    if max_rouge_l(text, local_responses) > s.rouge_threshold + 1e-9:
        return "response_copy"
    return None


def response_prompt(demos: list[Example], instruction: str, *, template: str, tokenizer) -> str:
    """Worked local examples in the training template, then the new instruction awaiting its response."""
    shots = "".join(build_prompt(d.instruction, d.input, template=template, tokenizer=tokenizer) + d.output + "\n\n"
                    for d in demos)
    return shots + build_prompt(instruction, "", template=template, tokenizer=tokenizer)


def _gen(model, tok, prompts, s: SelfGenSettings, max_new_tokens: int, stop: list[str], seed: int) -> list[str]:
    return generate(model, tok, prompts, max_new_tokens=max_new_tokens, batch_size=s.batch_size,
                    do_sample=s.do_sample, temperature=s.temperature, top_p=s.top_p,
                    repetition_penalty=s.repetition_penalty, stop_strings=stop, seed=seed)


@functools.lru_cache(maxsize=4)
def public_pool(path: str) -> tuple[Example, ...]:
    from .data import load_examples

    return tuple(load_examples(path, on_duplicate="drop"))


def self_generate(model, tokenizer, local: list[Example], s: SelfGenSettings, *, seed: int,
                  template: str = "alpaca", num: int | None = None) -> tuple[list[Example], SelfGenReport]:
    """Write up to ``num`` (default ``s.num_instructions``) new synthetic examples from ``local`` demonstrations.

    ``model`` must carry the shared global adapter. Deterministic for a given seed (demonstrations are drawn from a
    seeded generator; decoding is greedy unless ``s.do_sample``). With ``s.public_data`` set, the same number of
    examples is drawn from that public file instead (the paper's synthetic-vs-public ablation).
    """
    num = s.num_instructions if num is None else num
    rng = np.random.default_rng(seed)
    report = SelfGenReport()
    if num <= 0 or not local:
        return [], report
    if s.public_data:
        pool = public_pool(s.public_data)
        picked = [dataclasses.replace(pool[i], category="public")
                  for i in sorted(rng.choice(len(pool), size=min(num, len(pool)), replace=False))]
        report.kept = len(picked)
        return picked, report
    local_instr = task_texts(local, s.task_text)
    local_resp = [e.output for e in local]
    k = min(s.demos, len(local))

    # Phase A: instructions
    accepted: list[str] = []
    attempts = [0] * num
    pending = list(range(num))
    while pending:
        prompts = [instruction_prompt([local_instr[i] for i in rng.choice(len(local), k, replace=False)])
                   for _ in pending]
        outs = _gen(model, tokenizer, prompts, s, s.max_instruction_tokens, ["\n"], seed + len(accepted))
        report.generated_instructions += len(outs)
        retry = []
        for slot, out in zip(pending, outs):
            attempts[slot] += 1
            cand = parse_instruction(out)
            why = instruction_filter(cand, local_instr + accepted, s)
            if why is None:
                accepted.append(cand)
            else:
                report.dropped[why] += 1
                if attempts[slot] < s.max_attempts:
                    retry.append(slot)
        pending = retry

    # Phase B: responses
    kept: list[Example] = []
    r_demos = min(s.response_demos, len(local))
    todo = [(instr, 0) for instr in accepted]
    while todo:
        prompts = [response_prompt([local[i] for i in rng.choice(len(local), r_demos, replace=False)], instr,
                                   template=template, tokenizer=tokenizer) for instr, _ in todo]
        outs = _gen(model, tokenizer, prompts, s, s.max_response_tokens, ["###"], seed + 7 + len(kept))
        report.generated_responses += len(outs)
        retry = []
        for (instr, tries), out in zip(todo, outs):
            resp = clean_response(out)
            why = response_filter(resp, local_resp, s)
            if why is None:
                kept.append(Example(instruction=instr, output=resp, category=SYNTHETIC))
            else:
                report.dropped[why] += 1
                if tries + 1 < s.max_attempts:
                    retry.append((instr, tries + 1))
        todo = retry
    report.kept = len(kept)
    return kept, report
