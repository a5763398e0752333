"""The pairwise LLM judge: parsers, bilateral aggregation, both orders, caching, retries (a fake client, no network)."""

from __future__ import annotations

import json
from types import SimpleNamespace

import openai
import pytest

try:  # openai's exceptions take this HTTP library's Request/Response (httpx2 in openai 3.x, httpx before)
    import httpx2 as httpx
except ImportError:
    import httpx

from fedpit.errors import ConfigError
from fedpit.judge import (
    Judge,
    JudgeConfig,
    JudgeResult,
    build_messages,
    parse_alpacare,
    parse_fedpit,
    verdict_from_text,
)

SECRET = "sk-test-SECRET-0123456789"
REQUEST = httpx.Request("POST", "http://127.0.0.1:8011/v1/chat/completions")


def status_error(cls, status: int, message: str = "boom"):
    return cls(message, response=httpx.Response(status, request=REQUEST), body=None)


class FakeClient:
    """Mimics ``openai.OpenAI().chat.completions.create``: replies ``respond(messages)``, or raises it if an error."""

    def __init__(self, respond):
        self.respond = respond
        self.received: list[dict] = []
        self.chat = SimpleNamespace(completions=SimpleNamespace(create=self.create))

    def create(self, **kw):
        self.received.append(kw)
        reply = self.respond(kw["messages"])
        if isinstance(reply, Exception):
            raise reply
        return SimpleNamespace(choices=[SimpleNamespace(message=SimpleNamespace(content=reply))])


def model_shown_first(messages, model_output: str, reference_output: str) -> bool:
    user = messages[-1]["content"]
    return user.rindex(model_output) < user.rindex(reference_output)


def make_judge(tmp_path, respond, **cfg):
    sleeps: list[float] = []
    client = FakeClient(respond)
    judge = Judge(JudgeConfig(cache_dir=str(tmp_path / "cache"), **cfg), client=client, sleep=sleeps.append)
    return judge, client, sleeps


# -------------------------------------------------------------------------------------------------------------- parsers


@pytest.mark.parametrize(
    "text, expected",
    [
        ("Output (a)", "a"),
        ("Output (b)", "b"),
        ("Tie", "tie"),
        ("output (A)", "a"),
        ("OUTPUT (B)", "b"),
        ("TIE", "tie"),
        ('"Output (a)"', "a"),
        ("'Output (b)'", "b"),
        ("**Output (b)**", "b"),
        ("(a)", "a"),
        ("(b)", "b"),
        ("a", "a"),
        ("B.", "b"),
        ("Output (A) is better", "a"),
        ("Output b", "b"),
        ("Tie.", "tie"),
        ("It's a tie.", "tie"),
        ("   \n Output (b)  \n", "b"),
        ("Better answer: Output (a)", "a"),
        ("Output (a) and Output (b) are both fine", None),
        ("Output (a)\nTie", None),
        ("(a) or (b)", None),
        ("", None),
        ("   ", None),
        (None, None),
        ("I cannot decide.", None),
        ("The first one", None),
        ("c", None),
    ],
)
def test_parse_alpacare(text, expected):
    assert parse_alpacare(text) == expected


A, B = (4.0, 5.0, 3.0, 4.0), (2.0, 3.0, 3.0, 4.0)


@pytest.mark.parametrize(
    "text",
    [
        "Output (a): 4, 5, 3, 4\nOutput (b): 2, 3, 3, 4",
        "  output (A) :  4 ,5,  3 , 4 \n\n OUTPUT (B):2 3 3 4  ",
        "Output (a): 4/5, 5/5, 3 / 5, 4 out of 5\nOutput (b): 2/5, 3/5, 3/5, 4/5",
        "Output (a): 4, 5, 3, 4.\nOutput (b): 2, 3, 3, 4.",
        "Output a: 4, 5, 3, 4\nOutput b: 2, 3, 3, 4",
        "Output (b): 2, 3, 3, 4\nOutput (a): 4, 5, 3, 4",
        "Output (a): helpfulness: 4, relevance: 5, correctness: 3, coherence: 4\n"
        "Output (b): helpfulness: 2, relevance: 3, correctness: 3, coherence: 4",
        "Output (a):\n1. Helpfulness: 4\n2. Relevance: 5\n3. Correctness: 3\n4. Coherence: 4\n"
        "Output (b):\n1. Coherence: 4\n2. Helpfulness: 2\n3. Relevance: 3\n4. Correctness: 3",
        "Output (a) [helpfulness, relevance, correctness, coherence]: 4, 5, 3, 4\nOutput (b) [same]: 2, 3, 3, 4",
    ],
)
def test_parse_fedpit_accepts(text):
    assert parse_fedpit(text) == (A, B)


@pytest.mark.parametrize(
    "text",
    [
        "",
        None,
        "garbage",
        "4, 5, 3, 4\n2, 3, 3, 4",
        "Output (a): 4, 5, 3\nOutput (b): 2, 3, 3, 4",  # three scores
        "Output (a): 4, 5, 3, 4, 5\nOutput (b): 2, 3, 3, 4",  # five scores
        "Output (a): 4, 5, 3, 6\nOutput (b): 2, 3, 3, 4",  # out of range
        "Output (a): 0, 5, 3, 4\nOutput (b): 2, 3, 3, 4",
        "Output (a): 4, 5, 3, 4",  # one side only
        "Output (a): 4, 5, 3, 4\nOutput (a): 2, 3, 3, 4",  # a labelled twice
        "Output (a): 4, 5, 3, 4\nOutput (b): 2, 3, 3, 4\nOutput (b): 1, 1, 1, 1",
    ],
)
def test_parse_fedpit_rejects(text):
    assert parse_fedpit(text) is None


@pytest.mark.parametrize(
    "text, winner",
    [
        ("Output (a): 4, 5, 3, 4\nOutput (b): 2, 3, 3, 4", "a"),
        ("Output (a): 1, 1, 1, 2\nOutput (b): 1, 1, 1, 3", "b"),
        ("Output (a): 5, 3, 4, 4\nOutput (b): 4, 4, 4, 4", "tie"),  # different scores, equal means
        ("Output (a): 4, 4", None),
    ],
)
def test_verdict_from_text_fedpit(text, winner):
    v = verdict_from_text("fedpit", text)
    assert (v.raw, v.winner) == (text, winner)
    assert (v.scores_a is None) == (winner is None)


def test_verdict_from_text_alpacare_and_unknown_protocol():
    assert verdict_from_text("alpacare", "Output (b)").winner == "b"
    assert verdict_from_text("alpacare", None).raw == ""
    with pytest.raises(ConfigError, match="protocol"):
        verdict_from_text("mtbench", "x")
    with pytest.raises(ConfigError, match="protocol"):
        JudgeConfig(protocol="mtbench")


@pytest.mark.parametrize("protocol", ["fedpit", "alpacare"])
def test_build_messages(protocol):
    msgs = build_messages(protocol, "Explain X.", "ANSWER-ONE", "ANSWER-TWO")
    assert [m["role"] for m in msgs] == ["system", "user"]
    user = msgs[1]["content"]
    assert user.endswith(":") and "Explain X." in user
    assert user.index("ANSWER-ONE") < user.index("ANSWER-TWO")
    assert user.rindex("## Output (a):\nANSWER-ONE") < user.rindex("## Output (b):\nANSWER-TWO")


# ---------------------------------------------------------------------------------------------------------- aggregation

ITEMS = [{"instruction": f"q{i}", "model_output": f"MODEL-{i}", "reference_output": f"REF-{i}"} for i in range(4)]
# per item: (outcome with the model shown first, outcome with the model shown second); None = garbage reply
SCRIPT = [("win", "tie"), ("loss", "loss"), ("win", "win"), ("win", None)]


def scripted(protocol):
    """A judge reply producing the scripted outcome (relative to the model) for whichever order is asked."""
    replies = {
        "alpacare": {"a": "Output (a)", "b": "Output (b)", "tie": "Tie"},
        "fedpit": {
            "a": "Output (a): 5, 4, 4, 4\nOutput (b): 3, 3, 3, 3",
            "b": "Output (a): 2, 3, 3, 3\nOutput (b): 4, 4, 4, 4",
            "tie": "Output (a): 5, 3, 4, 4\nOutput (b): 4, 4, 4, 4",
        },
    }[protocol]

    def respond(messages):
        user = messages[-1]["content"]
        i = next(i for i in range(len(ITEMS)) if f"MODEL-{i}" in user)
        first = model_shown_first(messages, f"MODEL-{i}", f"REF-{i}")
        outcome = SCRIPT[i][0 if first else 1]
        if outcome is None:
            return "I refuse to choose."
        if outcome == "tie":
            return replies["tie"]
        model_pos, ref_pos = ("a", "b") if first else ("b", "a")
        return replies[model_pos if outcome == "win" else ref_pos]

    return respond


@pytest.mark.parametrize("protocol", ["alpacare", "fedpit"])
def test_compare_bilateral_arithmetic(tmp_path, protocol):
    judge, client, _ = make_judge(tmp_path, scripted(protocol), protocol=protocol)
    res = judge.compare(ITEMS)
    assert judge.calls == len(client.received) == 8
    assert [(it["verdict_model_first"], it["verdict_model_second"]) for it in res.per_item] == SCRIPT
    assert [it["item_score"] for it in res.per_item] == [0.75, 0.0, 1.0, None]
    # 7 valid judgments pooled: 4 wins, 1 tie, 2 losses; the garbage one is counted, never guessed
    assert (res.win, res.tie, res.loss) == pytest.approx((400 / 7, 100 / 7, 200 / 7))
    assert res.wt == pytest.approx(500 / 7)
    assert res.score == pytest.approx((0.75 + 0.0 + 1.0) / 3)
    assert (res.unparseable, res.n_items) == (1, 4)
    d = res.as_dict()
    assert d["per_item"][0]["instruction"] == "q0" and json.loads(json.dumps(d))["n_items"] == 4


def test_result_with_no_valid_judgments_is_json_safe():
    res = JudgeResult.from_items(
        [{"instruction": "q", "verdict_model_first": None, "verdict_model_second": None, "item_score": None}]
    )
    assert res.unparseable == 2
    assert json.loads(json.dumps(res.as_dict(), allow_nan=False))["score"] is None


def test_both_orders_are_sent(tmp_path):
    judge, client, _ = make_judge(tmp_path, lambda m: "Tie", protocol="alpacare", model="judge-x", max_tokens=7)
    judge.compare([{"instruction": "Say hi.", "model_output": "MODEL-ANSWER", "reference_output": "REF-ANSWER"}])
    users = [kw["messages"][-1]["content"] for kw in client.received]
    assert len(users) == 2
    assert "## Output (a):\nMODEL-ANSWER" in users[0] and "## Output (b):\nREF-ANSWER" in users[0]
    assert "## Output (a):\nREF-ANSWER" in users[1] and "## Output (b):\nMODEL-ANSWER" in users[1]
    assert all((kw["model"], kw["temperature"], kw["max_tokens"]) == ("judge-x", 0.0, 7) for kw in client.received)


def test_compare_rejects_bad_items(tmp_path):
    judge, _, _ = make_judge(tmp_path, lambda m: "Tie")
    with pytest.raises(ConfigError, match="item 1.*reference_output"):
        judge.compare([{"instruction": "q", "model_output": "m"}])


# -------------------------------------------------------------------------------------------------------------- caching


def test_cache_makes_reruns_free_and_never_stores_the_key(tmp_path, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", SECRET)
    cache = tmp_path / "cache"
    judge = Judge(JudgeConfig(cache_dir=str(cache), protocol="alpacare"), sleep=lambda s: None)
    assert judge.client.api_key == SECRET and judge.client.max_retries == 0  # the real client, created lazily
    fake = FakeClient(scripted("alpacare"))
    monkeypatch.setattr(judge.client.chat.completions, "create", fake.create)
    first = judge.compare(ITEMS)
    assert judge.calls == 8
    assert judge.compare(ITEMS).as_dict() == first.as_dict() and judge.calls == 8
    fresh, _, _ = make_judge(tmp_path, lambda m: pytest.fail("a cached verdict must cost no call"), protocol="alpacare")
    assert fresh.compare(ITEMS).as_dict() == first.as_dict() and fresh.calls == 0
    files = sorted(cache.iterdir())
    assert len(files) == 8 and all(f.suffix == ".json" for f in files)
    for f in files:
        assert SECRET not in f.read_text()
        record = json.loads(f.read_text())
        assert {"raw", "winner", "model", "base_url", "protocol"} <= record.keys()
    other, _, _ = make_judge(tmp_path, scripted("alpacare"), protocol="alpacare", model="another-judge")
    other.judge_pair("q0", "MODEL-0", "REF-0")
    assert other.calls == 1  # the judge model is part of the key


def test_missing_key_uses_empty(tmp_path, monkeypatch):
    monkeypatch.delenv("MY_JUDGE_KEY", raising=False)
    judge = Judge(JudgeConfig(cache_dir=str(tmp_path), api_key_env="MY_JUDGE_KEY", base_url="http://h:1/v1"))
    assert judge.client.api_key == "EMPTY" and str(judge.client.base_url).startswith("http://h:1/v1")


# -------------------------------------------------------------------------------------------------------------- retries


@pytest.mark.parametrize(
    "make_error",
    [
        lambda: status_error(openai.RateLimitError, 429),
        lambda: status_error(openai.InternalServerError, 503),
        lambda: openai.APITimeoutError(request=REQUEST),
        lambda: openai.APIConnectionError(request=REQUEST),
    ],
)
def test_transient_errors_are_retried_with_backoff(tmp_path, make_error):
    replies = iter([make_error(), make_error(), "Output (b)"])
    judge, _, sleeps = make_judge(tmp_path, lambda m: next(replies), protocol="alpacare")
    assert judge.judge_pair("q", "x", "y").winner == "b"
    assert judge.calls == 3
    assert len(sleeps) == 2 and 0.5 <= sleeps[0] <= 1.0 and 1.0 <= sleeps[1] <= 2.0  # base 1 s, doubling, jitter


def test_gives_up_after_max_retries(tmp_path):
    judge, _, sleeps = make_judge(tmp_path, lambda m: status_error(openai.RateLimitError, 429), max_retries=6)
    with pytest.raises(ConfigError, match="kept failing") as err:
        judge.judge_pair("q", "x", "y")
    assert judge.calls == 7 and len(sleeps) == 6
    assert max(sleeps) <= 30.0 and sleeps[-1] >= 15.0  # capped at 30 s, jitter in [d/2, d]
    assert "127.0.0.1:8011" in str(err.value) and "gpt-4-0613" in str(err.value)
    assert not list((tmp_path / "cache").glob("*.json"))  # failures are not cached


@pytest.mark.parametrize(
    "cls, status", [(openai.AuthenticationError, 401), (openai.NotFoundError, 404), (openai.BadRequestError, 400)]
)
def test_client_errors_fail_at_once_without_the_key(tmp_path, monkeypatch, cls, status):
    monkeypatch.setenv("OPENAI_API_KEY", SECRET)
    error = status_error(cls, status, f"Incorrect API key provided:\n{SECRET}")
    judge, _, sleeps = make_judge(tmp_path, lambda m: error, model="judge-y")
    with pytest.raises(ConfigError) as err:
        judge.judge_pair("q", "x", "y")
    msg = str(err.value)
    assert judge.calls == 1 and sleeps == []
    assert "127.0.0.1:8011" in msg and "judge-y" in msg and f"HTTP {status}" in msg
    assert SECRET not in msg and "\n" not in msg
