"""``--protocol flowertune-style``: generation-based scoring in the shape of FlowerTune's medical evaluation.

Per item: an instruction for the benchmark, the question as "Question: ..." with "Options:" and lettered choices,
then "The answer is:", wrapped as ``<|im_start|>question\\n{prompt}<|im_end|>\\n<|im_start|>answer\\n`` whatever the
model's own chat template is. Greedy decoding, one prompt at a time; ``max_new_tokens`` is the token length of the
first gold answer of each batch of 16. The prediction is the first character of the output lower-cased and stripped
to letters and digits (PubMedQA: y/n/m for yes/no/maybe).

The instructions are fedpit's own wording (FlowerTune's text is not available offline), and the model is not
quantized, so the numbers are "FlowerTune-style, unquantized, not leaderboard-eligible".
"""

from __future__ import annotations

import re
from pathlib import Path

from .data import BENCHMARKS, LETTERS, gold_index

LABEL = "FlowerTune-style, unquantized, not leaderboard-eligible"
BATCH = 16
WRAPPER = "<|im_start|>question\n{prompt}<|im_end|>\n<|im_start|>answer\n"

INSTRUCTIONS = {
    "pubmedqa": "Read the research abstract below and answer the question about it with yes, no or maybe.",
    "medqa": "This is a question from a US medical licensing exam. Choose the one best option and give its letter.",
    "medmcqa": "This is a question from an Indian medical entrance exam. Choose the one best option and give its "
    "letter.",
}


def options(name: str, rec: dict) -> list[str]:
    if name == "pubmedqa":
        return list(BENCHMARKS["pubmedqa"].choices)
    if name == "medqa":
        return [rec[f"ending{i}"] for i in range(4)]
    return [rec["opa"], rec["opb"], rec["opc"], rec["opd"]]


def build_prompt(name: str, rec: dict) -> str:
    if name == "pubmedqa":
        question = "\n".join(rec["CONTEXTS"]) + "\n" + rec["QUESTION"]
        opts = "\n".join(f"{c}" for c in BENCHMARKS["pubmedqa"].choices)
    else:
        question = rec["sent1"] if name == "medqa" else rec["question"]
        opts = "\n".join(f"{L}. {o}" for L, o in zip(LETTERS, options(name, rec)))
    q = question.rstrip()
    if not q.endswith("?"):
        q += "?" if name == "pubmedqa" else ""
    prompt = f"{INSTRUCTIONS[name]}\n\nQuestion: {q}\nOptions:\n{opts}\nThe answer is:"
    return WRAPPER.format(prompt=prompt)


def gold_answer(name: str, rec: dict) -> str:
    """The gold answer as text: yes/no/maybe for PubMedQA, the letter for the others."""
    return BENCHMARKS[name].choices[gold_index(name, rec)]


def parse_answer(name: str, output: str) -> str | None:
    """The first character of the lower-cased, alphanumeric-only output, mapped to a choice (None: no answer)."""
    s = re.sub(r"[^0-9a-z]", "", output.lower())
    if not s:
        return None
    c = s[0]
    for choice in BENCHMARKS[name].choices:
        if choice[0].lower() == c:
            return choice
    return None


def run_flowertune(
    name: str,
    records: list[dict],
    *,
    model_path: str,
    adapter: str | Path | None,
    dtype: str,
    limit: int | None = None,
    device: str = "cpu",
    progress: bool = True,
) -> dict:
    import math

    import torch
    from transformers import AutoModelForCausalLM

    from ..backbone import load_tokenizer, resolve_dtype

    recs = records[:limit] if limit else records
    tok = load_tokenizer(model_path)
    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=resolve_dtype(dtype, torch.device(device)))
    if adapter is not None:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, str(adapter))
    model.to(device).eval()
    rows = []
    it = range(len(recs))
    if progress:
        from tqdm import tqdm

        it = tqdm(it, desc=f"{name} (flowertune-style)", unit="item")
    max_new = 1
    for i in it:
        rec = recs[i]
        if i % BATCH == 0:
            max_new = max(1, len(tok(gold_answer(name, rec), add_special_tokens=False)["input_ids"]))
        enc = tok(build_prompt(name, rec), return_tensors="pt", add_special_tokens=False).to(device)
        with torch.no_grad():
            out = model.generate(
                **enc, max_new_tokens=max_new, do_sample=False, num_beams=1, pad_token_id=tok.pad_token_id
            )
        text = tok.decode(out[0, enc["input_ids"].shape[1] :], skip_special_tokens=True)
        pred, gold = parse_answer(name, text), gold_answer(name, rec)
        rows.append(
            {
                "doc_id": i,
                "id": rec.get("pubid", rec.get("id")),
                "gold": gold,
                "output": text,
                "pred": pred,
                "acc": float(pred == gold),
            }
        )
    n = len(rows)
    acc = sum(r["acc"] for r in rows) / n if n else float("nan")
    # the same closed form lm-eval uses for a mean (sample standard deviation with n - 1, over sqrt(n))
    se = math.sqrt(acc * (1 - acc) * n / (n - 1) / n) if n > 1 else None
    return {"metrics": {"n": n, "acc": acc, "acc_stderr": se}, "samples": rows}
