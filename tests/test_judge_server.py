"""The judge end to end against a real OpenAI-compatible server on 127.0.0.1: llama-cpp-python's server serving the
packaged SmolLM2 GGUF (the `llamacpp` extra). Its verdicts are weak; this proves the plumbing over real HTTP: both
orders are sent, every reply is parsed or counted unparseable, the bilateral arithmetic holds, and the disk cache
makes a re-run free."""

from __future__ import annotations

import json
import math
import socket
import subprocess
import sys
import time
import urllib.request

import pytest

pytest.importorskip("llama_cpp.server", reason="needs the llamacpp extra: pip install 'fedpit[llamacpp]'")

from fedpit.backbone import packaged_gguf  # noqa: E402
from fedpit.judge import Judge, JudgeConfig  # noqa: E402

pytestmark = pytest.mark.integration

ITEMS = [
    {
        "instruction": "Name the organ that pumps blood through the body.",
        "model_output": "The heart.",
        "reference_output": "The heart pumps blood through the body's blood vessels.",
    },
    {
        "instruction": "Give one common symptom of influenza.",
        "input": "Answer in one sentence.",
        "model_output": "Bananas are yellow.",
        "reference_output": "A common symptom of influenza is a high fever.",
    },
]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server():
    port = _free_port()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "llama_cpp.server",
            "--model",
            str(packaged_gguf()),
            "--model_alias",
            "smollm2-judge",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--n_ctx",
            "2048",
            "--n_threads",
            "2",
            "--verbose",
            "false",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    url = f"http://127.0.0.1:{port}/v1"
    deadline = time.monotonic() + 120
    try:
        while True:
            try:
                with urllib.request.urlopen(f"{url}/models", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if proc.poll() is not None:
                pytest.fail(f"llama_cpp.server exited with {proc.returncode}: {proc.stderr.read()[-1500:]}")
            if time.monotonic() > deadline:
                pytest.fail("llama_cpp.server did not answer /v1/models within 120 s")
            time.sleep(0.5)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()


class Recording:
    """Wraps the real openai client's ``chat.completions.create`` and keeps what went over the wire."""

    def __init__(self, judge: Judge):
        self.sent: list[list[dict]] = []
        self.replies: list[str] = []
        real = judge.client.chat.completions.create

        def create(**kw):
            self.sent.append(kw["messages"])
            resp = real(**kw)
            self.replies.append(resp.choices[0].message.content or "")
            return resp

        judge.client.chat.completions.create = create


@pytest.mark.parametrize("protocol", ["alpacare", "fedpit"])
def test_judge_against_llama_cpp_server(server, tmp_path, protocol, monkeypatch):
    monkeypatch.setenv("FEDPIT_TEST_JUDGE_KEY", "sk-local-not-a-secret")
    cfg = JudgeConfig(
        base_url=server,
        model="smollm2-judge",
        protocol=protocol,
        max_tokens=48,
        timeout_s=120,
        max_retries=1,
        cache_dir=str(tmp_path / "cache"),
        api_key_env="FEDPIT_TEST_JUDGE_KEY",
    )
    judge = Judge(cfg)
    rec = Recording(judge)
    result = judge.compare(ITEMS)

    # Both orders went over HTTP for every item: the model's answer first, then the reference first.
    assert judge.calls == 2 * len(ITEMS) == len(rec.sent)
    for i, item in enumerate(ITEMS):
        first, second = rec.sent[2 * i][-1]["content"], rec.sent[2 * i + 1][-1]["content"]
        assert first.index(item["model_output"]) < first.index(item["reference_output"])
        assert second.index(item["reference_output"]) < second.index(item["model_output"])
    assert len(rec.replies) == len(rec.sent) and all(r.strip() for r in rec.replies)  # the server answered each

    # Every reply is a parsed verdict or counted unparseable, never guessed; the arithmetic follows from them.
    outcomes = [it[k] for it in result.per_item for k in ("verdict_model_first", "verdict_model_second")]
    assert set(outcomes) <= {"win", "tie", "loss", None}
    assert result.unparseable == outcomes.count(None)
    valid = [o for o in outcomes if o is not None]
    if valid:
        assert math.isclose(result.win + result.tie + result.loss, 100.0)
        assert math.isclose(result.wt, result.win + result.tie)
        assert math.isclose(result.win, 100.0 * valid.count("win") / len(valid))
    else:
        assert math.isnan(result.win) and math.isnan(result.score)
    for it in result.per_item:
        pts = {"win": 1.0, "tie": 0.5, "loss": 0.0}
        o1, o2 = it["verdict_model_first"], it["verdict_model_second"]
        assert it["item_score"] == (None if None in (o1, o2) else (pts[o1] + pts[o2]) / 2)

    # The cache holds each raw reply (and never the key); a re-run with a fresh judge makes no call at all.
    cached = sorted((tmp_path / "cache").glob("*.json"))
    assert len(cached) == 2 * len(ITEMS)
    assert sorted(json.loads(p.read_text())["raw"] for p in cached) == sorted(rec.replies)
    assert not any("sk-local-not-a-secret" in p.read_text() for p in cached)
    again = Judge(cfg)
    assert again.compare(ITEMS).as_dict() == result.as_dict()
    assert again.calls == 0
