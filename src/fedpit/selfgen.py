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
callers load the *global* adapter, never a private one. ``template`` picks the prompt format (the training template,
alpaca, or the model's own chat format).

Quality: :func:`assess_and_select` measures every candidate (MiniLM on-task and answer relevance, closeness to private
text, the private adapter's IFS terms where the caller has one), keeps ``keep`` of them by a score, and records both
in the report (per-candidate rows for the client's ``selfgen.json``, a summary for ``metrics.jsonl``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import math
import re
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
from rouge_score import rouge_scorer

from .config import (  # the [selfgen] section (config stays torch-free)
    GEN_TEMPLATES,
    SELECT_BY,
    TASK_TEXTS,
    FedPITConfig,
    SelfGenSettings,
)
from .data import Example
from .generate import generate
from .prompts import build_prompt

SYNTHETIC = "synthetic"
REFUSAL_PREFIXES = (
    "as a",
    "as an",
    "sorry",
    "i'm sorry",
    "i am sorry",
    "i cannot",
    "i can't",
    "i can not",
    "i apologize",
    "i'm unable",
    "i am unable",
    "unfortunately",
    "i do not",
    "i don't",
)
FILTERS = (
    "unparseable",
    "length",
    "truncated",
    "refusal",
    "bad_start",
    "similar",
    "response_empty",
    "response_short",
    "response_truncated",
    "response_degenerate",
    "response_copy",
)


def generation_template(setting: str, training_template: str, tokenizer) -> str:
    """The prompt format self-generation writes in: ``model`` follows the training template, ``auto`` is chat when
    the tokenizer has a chat template (the model's own format) and alpaca otherwise."""
    if setting not in GEN_TEMPLATES:
        raise ValueError(f"selfgen.template must be one of {', '.join(GEN_TEMPLATES)}, not {setting!r}")
    if setting == "model":
        return training_template
    if setting == "auto":
        return "chat" if getattr(tokenizer, "chat_template", None) else "alpaca"
    return setting


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
    return [
        " ".join(f"{e.instruction.strip()} {e.input.strip()}".split()) if e.input.strip() else e.instruction
        for e in local
    ]


@dataclass
class SelfGenReport:
    """What happened to every attempt: generated, dropped by each filter, offered to selection, kept; and the
    synthetic-quality measures (one row per candidate, a summary of the kept set)."""

    generated_instructions: int = 0
    generated_responses: int = 0
    dropped: Counter = field(default_factory=Counter)
    kept: int = 0  # examples the adapter trains on (after selection)
    trimmed: int = 0  # responses cut off by the token cap and cut back to their last complete sentence
    candidates: int | None = None  # examples that passed every filter, offered to selection (None: = kept)
    select_by: str = "off"
    template: str = ""  # the prompt format generation used
    rows: list = field(default_factory=list)  # per candidate: the measures, the selection score, kept or not
    quality: dict = field(default_factory=dict)  # summary over the kept examples
    quality_candidates: dict = field(default_factory=dict)  # the same over all candidates (when some were not kept)

    def as_dict(self, rows: bool = False) -> dict:
        d = {
            "generated_instructions": self.generated_instructions,
            "generated_responses": self.generated_responses,
            "dropped": {k: self.dropped.get(k, 0) for k in FILTERS},
            "trimmed": self.trimmed,
            "candidates": self.kept if self.candidates is None else self.candidates,
            "kept": self.kept,
            "select_by": self.select_by,
            "template": self.template,
            "quality": self.quality,
        }
        if self.quality_candidates:
            d["quality_candidates"] = self.quality_candidates
        if rows:
            d["rows"] = self.rows
        return d


_scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)


def max_rouge_l(candidate: str, references) -> float:
    """Highest Rouge-L F1 of ``candidate`` against any reference (0.0 when there are none)."""
    best = 0.0
    for ref in references:
        best = max(best, _scorer.score(ref, candidate)["rougeL"].fmeasure)
        if best >= 1.0:
            break
    return best


def _chat(tokenizer, messages: list[dict]) -> str:
    if tokenizer is None or not getattr(tokenizer, "chat_template", None):
        raise ValueError("selfgen.template 'chat' needs a tokenizer with a chat template; use 'alpaca'")
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def instruction_prompt(demos: list[str], *, template: str = "alpaca", tokenizer=None) -> str:
    """Self-Instruct's prompt: a header, the demonstrations as "Task 1..k", and an open "Task k+1:".

    In the chat format the header and the numbered tasks are the user's turn and the assistant's answer starts with
    the open "Task k+1:", so the model continues the list in its own format.
    """
    lines = ["Come up with a series of tasks:"]
    lines += [f"Task {i}: {d.strip()}" for i, d in enumerate(demos, 1)]
    if template == "chat":
        return _chat(tokenizer, [{"role": "user", "content": "\n".join(lines)}]) + f"Task {len(demos) + 1}:"
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
    grams = [tuple(words[i : i + n]) for i in range(len(words) - n + 1)]
    if not grams:
        return 0.0
    return 1.0 - len(set(grams)) / len(grams)


def clean_response(text: str) -> str:
    """Cut a response where the model starts a new prompt section."""
    return re.split(r"\n?#{2,}\s|\n\s*Task\s*\d+\s*:|\n\s*Instruction\s*:", text)[0].strip()


_SENTENCE_END = re.compile(r"[.!?][\"')\]]*(?=\s|$)")


def trim_cut_response(text: str) -> str:
    """A response cut off by the token cap, cut back to its last complete sentence ("" when none ends): trained
    as it came, its end would teach the model to stop mid-sentence (the training target ends with EOS)."""
    ends = [m.end() for m in _SENTENCE_END.finditer(text)]
    return text[: ends[-1]].rstrip() if ends else ""


def response_filter(text: str, local_responses, s: SelfGenSettings, *, cut_off: bool = False) -> str | None:
    """The name of the first filter a response fails, or None. ``cut_off``: the text was already trimmed back from
    the token cap, so too short a remainder counts as truncated rather than short."""
    if not text:
        return "response_truncated" if cut_off else "response_empty"
    if len(text.split()) < s.min_response_words:
        return "response_truncated" if cut_off else "response_short"
    if repeated_ngram_ratio(text) > s.max_repeat_ratio:
        return "response_degenerate"
    if max_rouge_l(text, local_responses) > s.rouge_threshold + 1e-9:
        return "response_copy"
    return None


def response_prompt(demos: list[Example], instruction: str, *, template: str, tokenizer) -> str:
    """Worked local examples, then the new instruction awaiting its response: in the alpaca format the examples are
    concatenated training prompts; in the chat format each is a user turn and the assistant's answer."""
    if template == "chat":
        turns = []
        for d in demos:
            turns += [
                {"role": "user", "content": f"{d.instruction}\n\n{d.input}" if d.input else d.instruction},
                {"role": "assistant", "content": d.output},
            ]
        return _chat(tokenizer, turns + [{"role": "user", "content": instruction}])
    shots = "".join(
        build_prompt(d.instruction, d.input, template=template, tokenizer=tokenizer) + d.output + "\n\n" for d in demos
    )
    return shots + build_prompt(instruction, "", template=template, tokenizer=tokenizer)


def _gen(model, tok, prompts, s: SelfGenSettings, max_new_tokens: int, stop: list[str], seed: int, **kw):
    return generate(
        model,
        tok,
        prompts,
        max_new_tokens=max_new_tokens,
        batch_size=s.batch_size,
        do_sample=s.do_sample,
        temperature=s.temperature,
        top_p=s.top_p,
        repetition_penalty=s.repetition_penalty,
        stop_strings=stop,
        seed=seed,
        **kw,
    )


@functools.lru_cache(maxsize=4)
def public_pool(path: str) -> tuple[Example, ...]:
    from .data import load_examples

    return tuple(load_examples(path, on_duplicate="drop"))


def self_generate(
    model,
    tokenizer,
    local: list[Example],
    s: SelfGenSettings,
    *,
    seed: int,
    template: str = "alpaca",
    num: int | None = None,
    respond: Callable[[], contextlib.AbstractContextManager] | None = None,
) -> tuple[list[Example], SelfGenReport]:
    """Write up to ``num`` (default ``s.num_instructions``) new synthetic examples from ``local`` demonstrations.

    ``model`` must carry the shared global adapter: it writes the instructions (Phase A). The responses (Phase B)
    are written inside ``respond()`` when given (a context in which ``model`` is the responder, e.g. the client's
    private model: ``selfgen.responder = private``), else by the shared model too. Deterministic for a given seed
    (demonstrations are drawn from a seeded generator; decoding is greedy unless ``s.do_sample``).

    With ``s.public_data`` set, the same number of public examples replaces the written instructions (the paper's
    synthetic-vs-public ablation), picked at random or nearest the client's own (``s.public_pick``); a responder
    (``respond``) answers them, otherwise their own answers are kept. Whoever wrote an answer, one too close to a
    private answer (Rouge-L above ``s.rouge_threshold``) is dropped and counted (``response_copy``).
    """
    num = s.num_instructions if num is None else num
    rng = np.random.default_rng(seed)
    report = SelfGenReport()
    if num <= 0 or not local:
        return [], report
    if s.public_data:
        picked = pick_public(public_pool(s.public_data), local, num, s.public_pick, rng)
        if respond is None:
            kept = _guard_copies(picked, local, s, report)
            report.kept = len(kept)
            return kept, report
        tasks = [dataclasses.replace(e, output="") for e in picked]
    else:
        tasks = None
    report.template = generation_template(s.template, template, tokenizer)
    if tasks is None:
        tasks = [
            Example(instruction=i, output="")
            for i in _write_instructions(model, tokenizer, local, s, num, rng, seed, report)
        ]
    with respond() if respond is not None else contextlib.nullcontext():
        kept = _write_responses(model, tokenizer, local, s, tasks, rng, seed, report)
    report.kept = len(kept)
    return kept, report


def pick_public(pool: tuple[Example, ...], local: list[Example], num: int, how: str, rng) -> list[Example]:
    """``num`` public examples (category ``public``): a seeded random draw, or (``nearest``) those nearest the
    client's own examples by MiniLM cosine over instruction plus input (every ChatDoctor instruction is the same
    sentence: the input carries the question), each public example scored by its best match among the client's."""
    k = min(num, len(pool))
    if how == "nearest":
        from .embed import minilm_embed

        own = _unit(minilm_embed([_task_text(e) for e in local]))
        best = (_pool_vectors(pool) @ own.T).max(axis=1)
        idx = sorted(np.argsort(-best, kind="stable")[:k].tolist())
    else:
        idx = sorted(rng.choice(len(pool), size=k, replace=False).tolist())
    return [dataclasses.replace(pool[i], category="public") for i in idx]


def _task_text(e: Example) -> str:
    return f"{e.instruction}\n{e.input}".strip()


@functools.lru_cache(maxsize=2)
def _pool_vectors(pool: tuple[Example, ...]) -> np.ndarray:
    """The public pool's MiniLM vectors, embedded once per pool (every client and round reuses them)."""
    from .embed import minilm_embed

    return _unit(minilm_embed([_task_text(e) for e in pool]))


def _guard_copies(picked: list[Example], local: list[Example], s: SelfGenSettings, report: SelfGenReport):
    """The leak guard on answers fedpit did not write: drop (and count) those too close to a private answer."""
    local_resp = [e.output for e in local]
    kept = []
    for e in picked:
        if max_rouge_l(e.output, local_resp) > s.rouge_threshold + 1e-9:
            report.dropped["response_copy"] += 1
        else:
            kept.append(e)
    return kept


def _write_instructions(
    model, tokenizer, local: list[Example], s: SelfGenSettings, num: int, rng, seed: int, report: SelfGenReport
) -> list[str]:
    """Phase A: new instructions. Each wave asks for the missing ones (one task per prompt); at most
    ``max_attempts`` waves, so every slot has ``max_attempts`` tries."""
    local_instr = task_texts(local, s.task_text)
    k = min(s.demos, len(local))
    accepted: list[str] = []
    for _ in range(s.max_attempts):
        need = num - len(accepted)
        if need <= 0:
            break
        prompts = [
            instruction_prompt(
                [local_instr[i] for i in rng.choice(len(local), k, replace=False)],
                template=report.template,
                tokenizer=tokenizer,
            )
            for _ in range(need)
        ]
        outs = _gen(model, tokenizer, prompts, s, s.max_instruction_tokens, ["\n"], seed + len(accepted))
        for cand in map(parse_instruction, outs):
            report.generated_instructions += 1
            why = instruction_filter(cand, local_instr + accepted, s)
            if why is None:
                accepted.append(cand)
            else:
                report.dropped[why] += 1
    return accepted


def _write_responses(
    model,
    tokenizer,
    local: list[Example],
    s: SelfGenSettings,
    tasks: list[Example],
    rng,
    seed: int,
    report: SelfGenReport,
) -> list[Example]:
    """Phase B: a response to each task (an accepted instruction, or a public example's instruction and input)
    from worked local examples; a filtered one is retried with fresh demonstrations, up to ``max_attempts`` tries
    per task."""
    fmt = report.template
    local_resp = [e.output for e in local]
    kept: list[Example] = []
    r_demos = min(s.response_demos, len(local))
    todo = [(task, 0) for task in tasks]
    r_stop = ["###"] if fmt != "chat" else ["<|im_start|>"]
    while todo:
        prompts = [
            response_prompt(
                [local[i] for i in rng.choice(len(local), r_demos, replace=False)],
                f"{task.instruction}\n\n{task.input}" if task.input else task.instruction,
                template=fmt,
                tokenizer=tokenizer,
            )
            for task, _ in todo
        ]
        outs, finished = _gen(
            model, tokenizer, prompts, s, s.max_response_tokens, r_stop, seed + 7 + len(kept), return_finished=True
        )
        report.generated_responses += len(outs)
        retry = []
        for (task, tries), out, done in zip(todo, outs, finished):
            resp = clean_response(out)
            cut = not done and resp == out.strip()  # clean_response cutting at a new section also ends the text
            if cut:
                resp = trim_cut_response(resp)
                report.trimmed += 1
            why = response_filter(resp, local_resp, s, cut_off=cut)
            if why is None:
                kept.append(dataclasses.replace(task, output=resp, category=task.category or SYNTHETIC))
            else:
                report.dropped[why] += 1
                if tries + 1 < s.max_attempts:
                    retry.append((task, tries + 1))
        todo = retry
    return kept


# ------------------------------------------------------------------------------------------------ synthetic quality
# Pure functions over texts and unit-normalized embeddings; :func:`assess_and_select` applies them every round.


def _unit(x) -> np.ndarray:
    a = np.asarray(x, dtype=np.float64)
    if a.ndim == 1:
        a = a[None, :]
    return a / np.linalg.norm(a, axis=1, keepdims=True).clip(min=1e-12)


def on_task_relevance(instruction_vecs, local_vecs) -> list[float]:
    """Per synthetic instruction: cosine to its nearest local task (high: on the client's task; low: off-task)."""
    if len(instruction_vecs) == 0:
        return []
    if len(local_vecs) == 0:
        return [float("nan")] * len(instruction_vecs)
    return (_unit(instruction_vecs) @ _unit(local_vecs).T).max(axis=1).tolist()


def answer_relevance(instruction_vecs, response_vecs) -> list[float]:
    """Per example: cosine of the response to its own instruction (high: the response is about the task)."""
    if len(instruction_vecs) == 0:
        return []
    return (_unit(instruction_vecs) * _unit(response_vecs)).sum(axis=1).tolist()


def distinct_ratio(texts) -> float:
    """Share of distinct texts (case and whitespace ignored); 1.0 when every one differs (nan for none)."""
    if not texts:
        return float("nan")
    return len({" ".join(t.lower().split()) for t in texts}) / len(texts)


def self_rouge_l(texts) -> float:
    """Mean pairwise Rouge-L F1 within a set (Self-BLEU's idea with Rouge-L): low is diverse (nan below 2 texts)."""
    if len(texts) < 2:
        return float("nan")
    vals = [_scorer.score(a, b)["rougeL"].fmeasure for i, a in enumerate(texts) for b in texts[i + 1 :]]
    return float(np.mean(vals))


def private_closeness(responses, local_responses) -> list[float]:
    """Per synthetic response: the highest Rouge-L F1 to any local (private) response, the leak guard's input
    (1.0: a copy of private text)."""
    return [max_rouge_l(r, local_responses) for r in responses]


def ifs_terms(engine, examples: list) -> tuple[list[float], list[float]]:
    """L(y|x) and L(y), the mean response-token losses with and without the prompt, under the loaded adapter."""
    from .prompts import encode

    if not examples:
        return [], []
    cond = engine.example_losses(engine.encode(examples))
    uncond = engine.example_losses([encode(engine.tokenizer, "", ex.output, engine.max_seq_len) for ex in examples])
    return list(cond), list(uncond)


def ifs_ratio(cond: float, uncond: float) -> float:
    return cond / uncond if uncond > 0 and math.isfinite(cond) else float("inf")


def top_k(scores, keep: int, *, lower_is_better: bool) -> list[int]:
    """Indices of the ``keep`` best scores, best first; ties (and nan, ranked last) broken by index: deterministic."""

    def key(i):
        v = scores[i]
        bad = v is None or not math.isfinite(v)
        return (bad, (v if lower_is_better else -v) if not bad else 0.0, i)

    return sorted(range(len(scores)), key=key)[: max(0, keep)]


def _mean(xs) -> float:
    xs = [x for x in xs if x is not None and math.isfinite(x)]
    return float(np.mean(xs)) if xs else float("nan")


def summarize_quality(rows: list[dict]) -> dict:
    """The round's one-number-per-measure summary of a set of measured examples."""
    if not rows:
        return {"n": 0}
    instr = [r["instruction"] for r in rows]
    out = {
        "n": len(rows),
        "on_task": _mean(r.get("on_task") for r in rows),
        "answer_relevance": _mean(r.get("answer_relevance") for r in rows),
        "distinct": distinct_ratio(instr),
        "self_rouge_l": self_rouge_l(instr),
        "private_rouge_l": _mean(r.get("private_rouge_l") for r in rows),
        "private_rouge_l_max": max(
            (r["private_rouge_l"] for r in rows if "private_rouge_l" in r), default=float("nan")
        ),
        "response_words": _mean(r.get("response_words") for r in rows),
    }
    if any("ifs" in r for r in rows):
        out.update(
            ifs=_mean(r.get("ifs") for r in rows),
            loss_cond=_mean(r.get("loss_cond") for r in rows),
            loss_uncond=_mean(r.get("loss_uncond") for r in rows),
        )
    return {
        k: (round(v, 4) if isinstance(v, float) and math.isfinite(v) else (None if isinstance(v, float) else v))
        for k, v in out.items()
    }


def measure_rows(
    synthetic: list[Example],
    local: list[Example],
    s: SelfGenSettings,
    *,
    ifs: tuple[list[float], list[float]] | None = None,
    embed=None,
) -> list[dict]:
    """One row per synthetic example: on-task relevance, answer relevance, closeness to private text and, given the
    private adapter's (L(y|x), L(y)), the IFS terms."""
    rows = [
        {"instruction": e.instruction, "response_words": len(e.output.split()), "private_rouge_l": round(c, 4)}
        for e, c in zip(synthetic, private_closeness([e.output for e in synthetic], [e.output for e in local]))
    ]
    if synthetic:
        if embed is None:
            from .embed import minilm_embed as embed
        tasks = task_texts(local, s.task_text)
        vecs = np.asarray(embed([e.instruction for e in synthetic] + [e.output for e in synthetic] + tasks))
        n = len(synthetic)
        for r, a, b in zip(
            rows, on_task_relevance(vecs[:n], vecs[2 * n :]), answer_relevance(vecs[:n], vecs[n : 2 * n])
        ):
            r.update(on_task=round(a, 4), answer_relevance=round(b, 4))
    if ifs is not None:
        for r, c, u in zip(rows, *ifs):
            r.update(loss_cond=round(c, 4), loss_uncond=round(u, 4), ifs=round(ifs_ratio(c, u), 4))
    return rows


def selection_size(select_by: str, s: SelfGenSettings, p: FedPITConfig) -> tuple[int, int | None]:
    """(candidates to generate, candidates to keep; None = all) for a selection setting: ``off`` generates
    ``selfgen.num_instructions`` and keeps them all; a score generates ``fedpit.candidates`` and keeps
    ``fedpit.keep``."""
    return (s.num_instructions, None) if select_by == "off" else (p.candidates, p.keep)


def relevance_score(row: dict) -> float:
    """The relevance selection score: mean of on-task and answer relevance (higher is better)."""
    return 0.5 * (row.get("on_task", float("nan")) + row.get("answer_relevance", float("nan")))


def assess_and_select(
    candidates: list[Example],
    local: list[Example],
    s: SelfGenSettings,
    report: SelfGenReport,
    *,
    keep: int | None = None,
    select_by: str = "off",
    ifs=None,
    embed=None,
) -> list[Example]:
    """Measure every candidate, keep ``keep`` of them by ``select_by``, record both in ``report``.

    ``off`` keeps every candidate; ``first`` keeps the first ``keep`` in generation order (the journal's random
    baseline: generation order carries no score); ``ifs`` (needs ``ifs``, the private adapter's L(y|x) and L(y) per
    candidate) the ``keep`` lowest IFS; ``relevance`` the ``keep`` most relevant.
    """
    if select_by not in SELECT_BY:
        raise ValueError(f"select_by must be one of {', '.join(SELECT_BY)}, not {select_by!r}")
    if select_by == "ifs" and ifs is None:
        if candidates:
            raise ValueError("select_by='ifs' needs the private adapter's losses")
        ifs = ([], [])
    need_rows = s.measure or select_by == "relevance"
    rows = (
        measure_rows(candidates, local, s, ifs=ifs, embed=embed)
        if need_rows
        else [{"instruction": e.instruction} for e in candidates]
    )
    if not need_rows and ifs is not None:
        for r, c, u in zip(rows, *ifs):
            r.update(loss_cond=round(c, 4), loss_uncond=round(u, 4), ifs=round(ifs_ratio(c, u), 4))
    keep = len(candidates) if keep is None or select_by == "off" else min(keep, len(candidates))
    if select_by == "ifs":
        scores = [ifs_ratio(c, u) for c, u in zip(*ifs)]
        chosen = top_k(scores, keep, lower_is_better=True)
    elif select_by == "relevance":
        scores = [relevance_score(r) for r in rows]
        chosen = top_k(scores, keep, lower_is_better=False)
    else:
        scores, chosen = [None] * len(candidates), list(range(keep))
    picked = set(chosen)
    for i, r in enumerate(rows):
        r["kept"] = i in picked
        if scores[i] is not None:
            r["score"] = round(scores[i], 4) if math.isfinite(scores[i]) else None
    report.rows, report.select_by = rows, select_by
    report.candidates, report.kept = len(candidates), len(chosen)
    if s.measure:
        report.quality = summarize_quality([rows[i] for i in chosen])
        if len(chosen) < len(candidates):
            report.quality_candidates = summarize_quality(rows)
    return [candidates[i] for i in chosen]


def summary_line(d: dict) -> str:
    """One line for the log from a report's ``as_dict()``: counts and the quality summary of the kept set."""
    q = d.get("quality") or {}

    def f(key, fmt=".2f"):
        v = q.get(key)
        return "-" if v is None else format(v, fmt)

    line = (
        f"selfgen {d.get('template') or '?'}: kept {d.get('kept', 0)}/{d.get('candidates', 0)}"
        f" by {d.get('select_by', 'off')}"
    )
    if q.get("n"):
        line += (
            f"; on-task {f('on_task')}, answer rel {f('answer_relevance')}, distinct {f('distinct')}, "
            f"self-RL {f('self_rouge_l')}, RL to private mean {f('private_rouge_l')} max "
            f"{f('private_rouge_l_max')}, {f('response_words', '.0f')} words"
        )
        if "ifs" in q:
            line += f", IFS {f('ifs', '.3f')}"
    return line
