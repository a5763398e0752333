"""Pairwise LLM-as-judge evaluation against reference answers, through any OpenAI-compatible chat endpoint.

Each item is judged twice (bilaterally): once with the model's answer as Output (a) and the reference as Output (b),
and once the other way round, so position bias cancels out. Two protocols:

* ``fedpit`` (the journal version's protocol): the judge scores both outputs 1-5 on helpfulness, relevance,
  correctness and coherence; the output with the higher mean score wins, equal means tie.
* ``alpacare`` (AlpacaFarm style): the judge answers "Output (a)", "Output (b)" or "Tie".

Judgments that cannot be parsed are counted, never guessed. Every verdict is cached on disk, keyed by the protocol,
model, endpoint and exact messages, so a re-run costs no calls. The API key is read from an environment variable when
the client is created and is never logged or stored.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import random
import re
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from .errors import ConfigError
from .extras import require
from .fsutil import write_atomic

PROTOCOLS = ("fedpit", "alpacare")
ASPECTS = ("helpfulness", "relevance", "correctness", "coherence")
BACKOFF_BASE_S, BACKOFF_CAP_S = 1.0, 30.0

FEDPIT_SYSTEM = """\
You are a fair and impartial evaluator. You will be given a user instruction and two candidate responses to it, \
Output (a) and Output (b). Rate each response on four criteria, each with a whole number from 1 (very poor) to \
5 (excellent):
1. helpfulness: how well the response accomplishes what the instruction asks for;
2. relevance: how closely the response stays on the subject of the instruction;
3. correctness: how accurate the response is, in facts and in reasoning;
4. coherence: how fluent and well organised the response is, free of grammatical errors.
Rate the content alone: the order in which the responses are shown, their length and any names in them must not \
influence you. Do not explain your ratings and do not repeat the inputs. Reply with exactly two lines, the four \
scores in the order helpfulness, relevance, correctness, coherence:
Output (a): <h>, <r>, <c>, <c>
Output (b): <h>, <r>, <c>, <c>

Example
## Instruction:
Name the largest planet in the solar system.

## Output (a):
Jupiter is the largest planet in the solar system; it is more massive than all the other planets combined.

## Output (b):
Saturn is the largest planet in the solar system.

## Scores:
Output (a): 5, 5, 5, 5
Output (b): 2, 4, 1, 4"""

ALPACARE_SYSTEM = "You are a careful assistant that compares two answers to one instruction and names the better one."

ALPACARE_HEADER = """\
Below are an instruction and two candidate answers to it, Output (a) and Output (b). Decide which answer responds to \
the instruction better; the choice may be subjective. If both are of the same quality, call it a tie. Your reply must \
be exactly one of "Output (a)", "Output (b)" or "Tie", and nothing else.

# Example
## Instruction:
Name the largest planet in the solar system.

## Output (a):
Saturn is the largest planet in the solar system.

## Output (b):
Jupiter is the largest planet in the solar system; it is more massive than all the other planets combined.

## Better answer:
Output (b)

# Task
Give only your verdict, without any explanation.

"""

TASK = "## Instruction:\n{instruction}\n\n## Output (a):\n{output_a}\n\n## Output (b):\n{output_b}\n\n## {ask}:"


def _check_protocol(protocol: str) -> None:
    if protocol not in PROTOCOLS:
        raise ConfigError(f"unknown judge protocol {protocol!r}; choose one of {', '.join(PROTOCOLS)}")


@dataclass(frozen=True)
class JudgeConfig:
    base_url: str = "http://127.0.0.1:8011/v1"
    model: str = "gpt-4-0613"
    api_key_env: str = "OPENAI_API_KEY"  # the NAME of the variable holding the key; the key is never logged or stored
    protocol: str = "fedpit"
    temperature: float = 0.0
    max_tokens: int = 64
    timeout_s: float = 60.0
    max_retries: int = 5
    cache_dir: str = ""  # default: <fedpit cache root>/judge

    def __post_init__(self):
        _check_protocol(self.protocol)
        if self.max_retries < 0 or self.max_tokens < 1 or self.timeout_s <= 0:
            raise ConfigError("judge max_retries must be >= 0, max_tokens >= 1 and timeout_s > 0")


@dataclass
class Verdict:
    """One judgment of one ordering; ``winner`` is "a", "b", "tie" or None (unparseable)."""

    raw: str
    winner: str | None
    scores_a: tuple[float, ...] | None = None
    scores_b: tuple[float, ...] | None = None


def build_messages(protocol: str, instruction: str, output_a: str, output_b: str) -> list[dict]:
    """The system and user messages asking the judge to compare ``output_a`` (shown first) with ``output_b``."""
    _check_protocol(protocol)
    ask = "Scores" if protocol == "fedpit" else "Better answer"
    task = TASK.format(instruction=instruction.strip(), output_a=output_a.strip(), output_b=output_b.strip(), ask=ask)
    if protocol == "fedpit":
        return [{"role": "system", "content": FEDPIT_SYSTEM}, {"role": "user", "content": task}]
    return [{"role": "system", "content": ALPACARE_SYSTEM}, {"role": "user", "content": ALPACARE_HEADER + task}]


_ALPACARE_LABELS = {
    "a": re.compile(r"\boutput\s*\(?\s*a\b|\(\s*a\s*\)"),
    "b": re.compile(r"\boutput\s*\(?\s*b\b|\(\s*b\s*\)"),
    "tie": re.compile(r"\btie\b"),
}


def parse_alpacare(text: str | None) -> str | None:
    """The one verdict ("a", "b" or "tie") a reply names; None when it names none or several, or is empty."""
    t = re.sub(r"[\"'`*_]", " ", (text or "").lower())
    t = " ".join(t.split())
    if t.strip(" .!:") in ("a", "b"):  # a bare letter
        return t.strip(" .!:")
    found = [label for label, pattern in _ALPACARE_LABELS.items() if pattern.search(t)]
    return found[0] if len(found) == 1 else None


_FEDPIT_LABEL = re.compile(r"\boutput\s*\(?\s*([ab])\b\s*\)?", re.IGNORECASE)
_NUM = r"(\d+(?:\.\d+)?)(?!\.?\d)(?:\s*(?:/|out of)\s*5(?!\.?\d))?"  # a score, with any "/5" swallowed
_SCORE = re.compile(r"(?<![\d.])" + _NUM, re.IGNORECASE)
_ASPECT_SCORE = re.compile(rf"\b({'|'.join(ASPECTS)})\b\W*?{_NUM}", re.IGNORECASE)


def _segment_scores(segment: str) -> tuple[float, ...]:
    """The number after each aspect name when all four are named once ("1. helpfulness: 4"), else all numbers."""
    named = [(name.lower(), float(v)) for name, v in _ASPECT_SCORE.findall(segment)]
    if len(named) == len(ASPECTS) and {n for n, _ in named} == set(ASPECTS):
        return tuple(dict(named)[a] for a in ASPECTS)
    return tuple(float(v) for v in _SCORE.findall(segment))


def parse_fedpit(text: str | None) -> tuple[tuple[float, ...], tuple[float, ...]] | None:
    """``(scores_a, scores_b)`` from a reply labelling each output once with exactly four scores in 1..5, else None.

    Each output's scores are read between its label and the next label (or the end), on one line or several: either
    all the numbers in order ("4, 5, 3, 4"), or, when aspects are named ("helpfulness: 4"), the number after each
    name (so numbered lists work). "/5" and "out of 5" are tolerated.
    """
    marks = list(_FEDPIT_LABEL.finditer(text or ""))
    if sorted(m.group(1).lower() for m in marks) != ["a", "b"]:
        return None
    scores = {}
    for m, end in zip(marks, [marks[1].start(), len(text)]):
        values = _segment_scores(text[m.end() : end])
        if len(values) != len(ASPECTS) or not all(1 <= v <= 5 for v in values):
            return None
        scores[m.group(1).lower()] = values
    return scores["a"], scores["b"]


def verdict_from_text(protocol: str, text: str | None) -> Verdict:
    """Parse a judge reply; for ``fedpit`` the output with the higher mean of its four scores wins."""
    _check_protocol(protocol)
    raw = text or ""
    if protocol == "alpacare":
        return Verdict(raw=raw, winner=parse_alpacare(raw))
    parsed = parse_fedpit(raw)
    if parsed is None:
        return Verdict(raw=raw, winner=None)
    a, b = parsed
    mean_a, mean_b = sum(a) / len(a), sum(b) / len(b)
    winner = "tie" if math.isclose(mean_a, mean_b, abs_tol=1e-9) else ("a" if mean_a > mean_b else "b")
    return Verdict(raw=raw, winner=winner, scores_a=a, scores_b=b)


_POINTS = {"win": 1.0, "tie": 0.5, "loss": 0.0}


@dataclass
class JudgeResult:
    """Bilateral results. Percentages pool all valid judgments (two per item); ``score`` averages per item first."""

    per_item: list[dict]
    win: float
    tie: float
    loss: float
    wt: float
    score: float
    unparseable: int
    n_items: int

    @classmethod
    def from_items(cls, per_item: list[dict]) -> JudgeResult:
        outcomes = [it[k] for it in per_item for k in ("verdict_model_first", "verdict_model_second")]
        valid = [o for o in outcomes if o is not None]
        pct = {k: 100.0 * valid.count(k) / len(valid) if valid else math.nan for k in _POINTS}
        item_scores = [it["item_score"] for it in per_item if it["item_score"] is not None]
        score = sum(item_scores) / len(item_scores) if item_scores else math.nan
        return cls(
            per_item=per_item,
            win=pct["win"],
            tie=pct["tie"],
            loss=pct["loss"],
            wt=pct["win"] + pct["tie"],
            score=score,
            unparseable=len(outcomes) - len(valid),
            n_items=len(per_item),
        )

    def as_dict(self) -> dict:
        """JSON-ready; NaN (no valid judgments) becomes None."""
        return {k: None if isinstance(v, float) and math.isnan(v) else v for k, v in asdict(self).items()}


def _openai():
    """The openai client package (the ``judge`` extra), imported only when a judge talks to an endpoint."""
    require("openai", "the judge (--judge-url)")
    import openai

    return openai


def _is_transient(exc: Exception) -> bool:
    openai = _openai()
    if isinstance(
        exc, (openai.APITimeoutError, openai.APIConnectionError, openai.RateLimitError, openai.InternalServerError)
    ):
        return True
    status = getattr(exc, "status_code", None)
    return isinstance(status, int) and (status == 429 or status >= 500)


def _backoff_s(attempt: int) -> float:
    """Exponential backoff with jitter: a random delay in [d/2, d] with d = min(cap, base * 2**attempt)."""
    return min(BACKOFF_CAP_S, BACKOFF_BASE_S * 2**attempt) * random.uniform(0.5, 1.0)


class Judge:
    """Judges pairs of outputs through ``client.chat.completions.create``, caching every verdict on disk."""

    def __init__(self, cfg: JudgeConfig, client=None, sleep=time.sleep):
        self.cfg = cfg
        self._client = client
        self._sleep = sleep
        self.calls = 0  # real endpoint calls (every attempt, retries included); cached verdicts cost none
        self.checked = False  # set by check()
        if cfg.cache_dir:
            self.cache_dir = Path(cfg.cache_dir).expanduser()
        else:
            from .backbone import cache_root  # lazily: backbone imports torch

            self.cache_dir = cache_root() / "judge"

    @property
    def client(self):
        if self._client is None:
            api_key = os.environ.get(self.cfg.api_key_env) or "EMPTY"  # local servers accept any key
            self._client = _openai().OpenAI(
                base_url=self.cfg.base_url, api_key=api_key, timeout=self.cfg.timeout_s, max_retries=0
            )  # retries are ours, with our backoff
        return self._client

    def _where(self) -> str:
        return f"judge endpoint {self.cfg.base_url} (model {self.cfg.model})"

    def _one_line(self, exc: Exception) -> str:
        msg = " ".join(str(exc).split())
        key = os.environ.get(self.cfg.api_key_env)
        if key:
            msg = msg.replace(key, "***")
        return msg[:200]

    def _local_hint(self, exc: Exception) -> str:
        """For a refused connection to this machine: how to serve a judge here (the ``llamacpp`` extra)."""
        from urllib.parse import urlparse

        from .extras import available, install_hint

        host = urlparse(self.cfg.base_url).hostname or ""
        local = host == "localhost" or host.startswith("127.") or host == "::1"
        if not local or "Connection" not in type(exc).__name__ or available("llama_cpp"):
            return ""
        return f" (nothing serves it; a local judge: {install_hint('llamacpp')}, then python -m llama_cpp.server)"

    def check(self) -> None:
        """One cheap request (a one-token reply) so that a dead, misaddressed or unauthorized endpoint is reported
        before any answer is generated; at most one retry. Done once per judge; raises a one-line ConfigError."""
        if self.checked:
            return
        self._complete(
            [{"role": "user", "content": "Reply with the word OK."}],
            max_tokens=1,
            max_retries=min(self.cfg.max_retries, 1),
        )
        self.checked = True

    def _complete(self, messages: list[dict], *, max_tokens: int | None = None, max_retries: int | None = None) -> str:
        retries = self.cfg.max_retries if max_retries is None else max_retries
        openai = _openai()
        for attempt in range(retries + 1):
            self.calls += 1
            try:
                resp = self.client.chat.completions.create(
                    model=self.cfg.model,
                    messages=messages,
                    temperature=self.cfg.temperature,
                    max_tokens=max_tokens or self.cfg.max_tokens,
                )
                if not resp.choices:
                    raise ConfigError(f"{self._where()} answered without any choices")
                return resp.choices[0].message.content or ""
            except openai.APIError as exc:
                if not _is_transient(exc):
                    status = getattr(exc, "status_code", None)
                    code = f"HTTP {status}: " if status else ""
                    raise ConfigError(f"{self._where()} rejected the request: {code}{self._one_line(exc)}") from None
                if attempt == retries:
                    raise ConfigError(
                        f"{self._where()} kept failing after {attempt + 1} attempts: "
                        f"{type(exc).__name__}: {self._one_line(exc)}{self._local_hint(exc)}"
                    ) from None
                self._sleep(_backoff_s(attempt))
        raise AssertionError("unreachable")

    def _cache_path(self, messages: list[dict]) -> Path:
        blob = json.dumps([self.cfg.protocol, self.cfg.model, self.cfg.base_url, messages], ensure_ascii=False)
        return self.cache_dir / f"{hashlib.sha256(blob.encode()).hexdigest()}.json"

    def judge_pair(self, instruction: str, output_a: str, output_b: str) -> Verdict:
        """One judgment of ``output_a`` (shown first) against ``output_b``; cached, so a repeat costs no call."""
        messages = build_messages(self.cfg.protocol, instruction, output_a, output_b)
        path = self._cache_path(messages)
        try:
            return verdict_from_text(self.cfg.protocol, json.loads(path.read_text(encoding="utf-8"))["raw"])
        except (OSError, ValueError, KeyError, TypeError):
            pass  # missing or unreadable: ask the endpoint
        verdict = verdict_from_text(self.cfg.protocol, self._complete(messages))
        record = {
            "protocol": self.cfg.protocol,
            "model": self.cfg.model,
            "base_url": self.cfg.base_url,
            **asdict(verdict),
        }
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(path, json.dumps(record, ensure_ascii=False, indent=1))
        return verdict

    def compare(self, items: list[dict]) -> JudgeResult:
        """Judge each item's ``model_output`` against its ``reference_output`` in both orders.

        Items hold ``instruction``, ``model_output`` and ``reference_output`` (an optional ``input`` is appended to the
        instruction). Outcomes are relative to the model: "win", "tie", "loss" or None (unparseable).
        """
        first = {"a": "win", "tie": "tie", "b": "loss", None: None}  # model shown as Output (a)
        second = {"b": "win", "tie": "tie", "a": "loss", None: None}  # model shown as Output (b)
        per_item = []
        for i, item in enumerate(items, 1):
            missing = [
                k for k in ("instruction", "model_output", "reference_output") if not isinstance(item.get(k), str)
            ]
            if missing:
                raise ConfigError(f"judge item {i}: missing or non-string field {missing[0]!r}")
            instruction = item["instruction"] + (f"\n\n{item['input']}" if item.get("input") else "")
            o1 = first[self.judge_pair(instruction, item["model_output"], item["reference_output"]).winner]
            o2 = second[self.judge_pair(instruction, item["reference_output"], item["model_output"]).winner]
            score = (_POINTS[o1] + _POINTS[o2]) / 2 if o1 is not None and o2 is not None else None
            per_item.append(
                {
                    "instruction": item["instruction"],
                    "verdict_model_first": o1,
                    "verdict_model_second": o2,
                    "item_score": score,
                }
            )
        return JudgeResult.from_items(per_item)
