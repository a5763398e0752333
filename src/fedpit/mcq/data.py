"""Local benchmark files -> the records lm-evaluation-harness's own medical tasks read.

The hub is not reachable, so the three test sets are read from a folder laid out as ``shared/data`` is::

    pubmedqa/ori_pqal.json                  PQA-L, 1,000 expert-labelled items (PMID -> record)
    pubmedqa/test_ground_truth.json         the official 500-item test split (PMID -> yes/no/maybe)
    medagents-benchmark/medqa/test.jsonl    MedQA-USMLE 4 options, 1,273 items
    medagents-benchmark/medmcqa/test.jsonl  MedMCQA dev set filtered to single-answer items, 2,816

and converted to the fields of the hub datasets lm-eval's ``pubmedqa`` (bigbio ``pubmed_qa_labeled_fold0_source``),
``medqa_4options`` (GBaker/MedQA-USMLE-4-options-hf) and ``medmcqa`` (openlifescienceai/medmcqa) tasks read, so their
prompt functions apply unchanged. The converted JSONL lives in the fedpit cache, keyed by the source files' content;
nothing is copied into the repository.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

from ..backbone import cache_root
from ..errors import ConfigError, DataError
from ..fsutil import write_atomic

LETTERS = ("A", "B", "C", "D")
CONVERSION = {"pubmedqa": 2}  # per benchmark (default 1); bump when its converted records change: part of the cache key


@dataclass(frozen=True)
class Benchmark:
    name: str  # what users type: pubmedqa, medqa, medmcqa
    task: str  # the lm-eval task this mirrors
    files: tuple[str, ...]  # paths under the data folder
    choices: tuple[str, ...]
    note: str = ""


BENCHMARKS = {
    "pubmedqa": Benchmark(
        "pubmedqa",
        "pubmedqa",
        ("pubmedqa/ori_pqal.json", "pubmedqa/test_ground_truth.json"),
        ("yes", "no", "maybe"),
        "official 500-item test split (PQA-L items selected by PMID)",
    ),
    "medqa": Benchmark(
        "medqa",
        "medqa_4options",
        ("medagents-benchmark/medqa/test.jsonl",),
        LETTERS,
        "MedQA-USMLE 4-option test set, 1,273 items (as FlowerTune and lm-eval)",
    ),
    "medmcqa": Benchmark(
        "medmcqa",
        "medmcqa",
        ("medagents-benchmark/medmcqa/test.jsonl",),
        LETTERS,
        "MedMCQA dev set filtered to 2,816 single-answer items: NOT the 4,183-item validation split FlowerTune uses",
    ),
}


def parse_benchmarks(text: str) -> list[str]:
    names = [b.strip().lower() for b in text.split(",") if b.strip()]
    bad = [b for b in names if b not in BENCHMARKS]
    if not names:
        raise ConfigError(
            f"--benchmarks is empty; choose from {', '.join(BENCHMARKS)} (or leave it out for the ordinary evaluation)"
        )
    if bad:
        raise ConfigError(f"--benchmarks: unknown '{','.join(bad) or text}'; choose from {', '.join(BENCHMARKS)}")
    return list(dict.fromkeys(names))


def default_data_dir() -> Path | None:
    """``$FEDPIT_BENCHMARK_DATA``, else ``../shared/data`` beside the source checkout when it exists."""
    if os.environ.get("FEDPIT_BENCHMARK_DATA"):
        return Path(os.environ["FEDPIT_BENCHMARK_DATA"]).expanduser()
    beside = Path(__file__).resolve().parents[3].parent / "shared" / "data"
    return beside if beside.is_dir() else None


def resolve_data_dir(data_dir: str | os.PathLike | None) -> Path:
    path = Path(data_dir).expanduser() if data_dir else default_data_dir()
    if path is None:
        raise ConfigError(
            "--benchmark-data: no folder given and no ../shared/data beside the checkout; pass the "
            "folder holding pubmedqa/ and medagents-benchmark/"
        )
    if not path.is_dir():
        raise DataError(path, "not a folder (expected the folder holding pubmedqa/ and medagents-benchmark/)")
    return path


def _read_json(path: Path, what: str):
    if not path.is_file():
        raise DataError(path, f"missing (expected {what})")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DataError(path, f"not valid JSON ({e}); expected {what}") from None


def _read_jsonl(path: Path, what: str) -> list[dict]:
    if not path.is_file():
        raise DataError(path, f"missing (expected {what})")
    rows = []
    with open(path, encoding="utf-8") as fh:
        for i, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(path, f"not valid JSON ({e.msg}); expected {what}", record=f"line {i}") from None
            if not isinstance(row, dict):
                raise DataError(path, "expected a JSON object", record=f"line {i}")
            rows.append((i, row))
    if not rows:
        raise DataError(path, f"empty (expected {what})")
    return rows


def _need_str(path: Path, rec: str, row: dict, field: str) -> str:
    v = row.get(field)
    if not isinstance(v, str) or not v.strip():
        raise DataError(path, "missing or not a non-empty string", record=rec, field=field)
    return v


def pubmedqa_records(folder: Path) -> list[dict]:
    """The 500 official test items: the PQA-L records whose PMID is in test_ground_truth.json.

    They keep ori_pqal.json's order: test_ground_truth.json is sorted by label (276 yes, then no, then maybe), so its
    first N items, which ``--limit N`` takes, would all be "yes".
    """
    ori_p, gt_p = folder / BENCHMARKS["pubmedqa"].files[0], folder / BENCHMARKS["pubmedqa"].files[1]
    ori = _read_json(ori_p, "PubMedQA PQA-L: a JSON object PMID -> {QUESTION, CONTEXTS, final_decision, ...}")
    gt = _read_json(gt_p, "the PubMedQA test split: a JSON object PMID -> yes/no/maybe")
    if not isinstance(ori, dict) or not ori:
        raise DataError(ori_p, "expected a non-empty JSON object PMID -> record")
    if not isinstance(gt, dict) or not gt:
        raise DataError(gt_p, "expected a non-empty JSON object PMID -> yes/no/maybe")
    for pmid, label in gt.items():
        if label not in ("yes", "no", "maybe"):
            raise DataError(gt_p, f"label '{label}' is not yes/no/maybe", record=f"PMID {pmid}")
        if not isinstance(ori.get(pmid), dict):
            raise DataError(ori_p, f"no record for test PMID {pmid} (listed in {gt_p.name})")
    out = []
    for pmid, row in ori.items():
        if pmid not in gt:
            continue
        label, rec = gt[pmid], f"PMID {pmid}"
        q = _need_str(ori_p, rec, row, "QUESTION")
        ctx = row.get("CONTEXTS")
        if not isinstance(ctx, list) or not ctx or not all(isinstance(c, str) for c in ctx):
            raise DataError(ori_p, "expected a non-empty list of strings", record=rec, field="CONTEXTS")
        if row.get("final_decision") != label:
            raise DataError(
                ori_p,
                f"'{row.get('final_decision')}' disagrees with {gt_p.name} ('{label}')",
                record=rec,
                field="final_decision",
            )
        out.append(
            {
                "pubid": pmid,
                "QUESTION": q,
                "CONTEXTS": ctx,
                "LONG_ANSWER": str(row.get("LONG_ANSWER", "")),
                "final_decision": label,
            }
        )
    return out


def _options(path: Path, rec: str, row: dict) -> list[str]:
    opts = row.get("options")
    if not isinstance(opts, dict) or set(opts) != set(LETTERS):
        raise DataError(path, "expected an object with exactly the keys A, B, C, D", record=rec, field="options")
    for k in LETTERS:
        if not isinstance(opts[k], str):
            raise DataError(path, f"option {k} is not a string", record=rec, field="options")
    if row.get("answer_idx") not in LETTERS:
        raise DataError(path, f"'{row.get('answer_idx')}' is not one of A, B, C, D", record=rec, field="answer_idx")
    return [opts[k] for k in LETTERS]


def medqa_records(folder: Path) -> list[dict]:
    """MedQA -> GBaker/MedQA-USMLE-4-options-hf fields (sent1, ending0-3, label)."""
    path = folder / BENCHMARKS["medqa"].files[0]
    out = []
    for i, row in _read_jsonl(path, "JSONL of {question, options: {A..D}, answer_idx}"):
        rec = f"line {i}"
        q = _need_str(path, rec, row, "question")
        opts = _options(path, rec, row)
        out.append(
            {
                "id": str(row.get("realidx", i)),
                "sent1": q,
                **{f"ending{j}": o for j, o in enumerate(opts)},
                "label": LETTERS.index(row["answer_idx"]),
            }
        )
    return out


def medmcqa_records(folder: Path) -> list[dict]:
    """MedMCQA -> openlifescienceai/medmcqa fields (question, opa-opd, cop as 0-3)."""
    path = folder / BENCHMARKS["medmcqa"].files[0]
    out = []
    for i, row in _read_jsonl(path, "JSONL of {question, options: {A..D}, answer_idx}"):
        rec = f"line {i}"
        q = _need_str(path, rec, row, "question")
        opts = _options(path, rec, row)
        out.append(
            {
                "id": str(row.get("realidx", i)),
                "question": q,
                "opa": opts[0],
                "opb": opts[1],
                "opc": opts[2],
                "opd": opts[3],
                "cop": LETTERS.index(row["answer_idx"]),
            }
        )
    return out


READERS = {"pubmedqa": pubmedqa_records, "medqa": medqa_records, "medmcqa": medmcqa_records}


def gold_index(name: str, rec: dict) -> int:
    """Index of the right choice in ``BENCHMARKS[name].choices``."""
    if name == "pubmedqa":
        return BENCHMARKS["pubmedqa"].choices.index(rec["final_decision"])
    return int(rec["label"] if name == "medqa" else rec["cop"])


def source_fingerprint(folder: Path, name: str) -> str:
    version = CONVERSION.get(name, 1)
    h = hashlib.sha256((name if version == 1 else f"{name}:{version}").encode())
    for rel in BENCHMARKS[name].files:
        p = folder / rel
        if not p.is_file():
            raise DataError(p, f"missing (expected the {name} benchmark file {rel} under {folder})")
        h.update(p.read_bytes())
    return h.hexdigest()[:12]


def prepare(
    name: str, data_dir: str | os.PathLike | None = None, cache_dir: str | None = None
) -> tuple[Path, list[dict]]:
    """Validate and convert one benchmark; returns (converted JSONL path, records). Reuses an earlier conversion."""
    folder = resolve_data_dir(data_dir)
    fp = source_fingerprint(folder, name)
    records = READERS[name](folder)  # validate every time: cheap, and errors name the source file
    dest = cache_root(cache_dir) / "benchmarks" / f"{name}-{fp}.jsonl"
    if not dest.is_file():
        dest.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(dest, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
    return dest, records
