"""Blind labelling of synthetic examples with the journal's three questions (PPFedIT App. C, Self-Instruct's review).

Two steps:

    # draw N kept synthetic examples from each run folder, shuffle them together, hide which run each came from
    python benchmarks/label_synthetic.py sample --run before=runs/A --run after=runs/B --n 50 --out benchmarks/labels/X
    #   -> X/items.jsonl (what the labeller sees: id, instruction, input, output), X/key.json (id -> run, file, line)
    # the labeller writes X/labels.jsonl: {"id": ..., "valid_task": 0|1, "appropriate_response": 0|1,
    #                                      "correct_format": 0|1}, one line per item, without opening key.json
    python benchmarks/label_synthetic.py score benchmarks/labels/X [--json PATH]

``score`` prints, per run, the share of "yes" for each question with a 95% Wilson interval, beside the automatic
quality measures fedpit recorded for the same examples (on-task and answer relevance, closeness to private text,
IFS, from each client's ``selfgen.json``), so a reader can see whether the automatic scores track the labels.
The items are synthetic text only (written by the model); no private example is copied into the label folder.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from pathlib import Path

from fedpit.mcq import ci95
from fedpit.rundir import RunDir

QUESTIONS = ("valid_task", "appropriate_response", "correct_format")
AUTO = ("on_task", "answer_relevance", "private_rouge_l", "ifs", "response_words")


def kept_examples(run: Path) -> list[dict]:
    """Every kept synthetic example of a run folder, with where it came from and its recorded quality row."""
    out = []
    for syn in sorted(p for p in RunDir(run).client_outputs() if p.name == "synthetic.jsonl"):
        rows = {}
        sg = syn.with_name("selfgen.json")
        if sg.exists():
            for r in json.loads(sg.read_text()).get("rows", []):
                if r.get("kept", True):
                    rows.setdefault(r["instruction"], r)
        for line_no, line in enumerate(syn.read_text().splitlines(), 1):
            if not line.strip():
                continue
            ex = json.loads(line)
            auto = rows.get(ex["instruction"], {})
            out.append(
                {
                    "file": str(syn.relative_to(run)),
                    "line": line_no,
                    "instruction": ex["instruction"],
                    "input": ex.get("input", ""),
                    "output": ex["output"],
                    "auto": {k: auto[k] for k in AUTO if k in auto},
                }
            )
    return out


def sample(args) -> None:
    rng = random.Random(args.seed)
    items, key = [], {}
    for spec in args.run:
        name, _, path = spec.partition("=")
        pool = kept_examples(Path(path))
        if len(pool) < args.n:
            sys.exit(f"{path}: {len(pool)} kept synthetic examples, fewer than --n {args.n}")
        for ex in rng.sample(pool, args.n):
            items.append((name, path, ex))
    rng.shuffle(items)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "items.jsonl", "w") as f:
        for i, (name, path, ex) in enumerate(items):
            item_id = f"s{i:03d}"
            f.write(json.dumps({"id": item_id, **{k: ex[k] for k in ("instruction", "input", "output")}}) + "\n")
            key[item_id] = {"run": name, "run_dir": path, "file": ex["file"], "line": ex["line"], "auto": ex["auto"]}
    (out / "key.json").write_text(json.dumps(key, indent=1) + "\n")
    print(f"{len(items)} items -> {out / 'items.jsonl'} (key: {out / 'key.json'}; do not show it to the labeller)")


def score(args) -> None:
    folder = Path(args.folder)
    key = json.loads((folder / "key.json").read_text())
    labels = {}
    for n, line in enumerate((folder / "labels.jsonl").read_text().splitlines(), 1):
        if not line.strip():
            continue
        row = json.loads(line)
        if row.get("id") not in key:
            sys.exit(f"{folder / 'labels.jsonl'}: line {n}: id {row.get('id')!r} is not an item")
        for q in QUESTIONS:
            if row.get(q) not in (0, 1):
                sys.exit(f"{folder / 'labels.jsonl'}: line {n}: field {q} must be 0 or 1")
        labels[row["id"]] = row
    missing = sorted(set(key) - set(labels))
    if missing:
        sys.exit(f"{folder / 'labels.jsonl'}: {len(missing)} items unlabelled (first: {missing[0]})")
    runs = list(dict.fromkeys(v["run"] for v in key.values()))
    result = {}
    print(f"| run | n | {' | '.join(QUESTIONS)} | {' | '.join(AUTO)} |")
    print("|---|---|" + "---|" * (len(QUESTIONS) + len(AUTO)))
    for run in runs:
        ids = [i for i, v in key.items() if v["run"] == run]
        r = {"n": len(ids)}
        cells = []
        for q in QUESTIONS:
            k = sum(labels[i][q] for i in ids)
            lo, hi = ci95(k / len(ids), len(ids))
            r[q] = {"share": k / len(ids), "ci95": [lo, hi]}
            cells.append(f"{100 * k / len(ids):.0f}% [{100 * lo:.0f}, {100 * hi:.0f}]")
        for a in AUTO:
            vals = [key[i]["auto"][a] for i in ids if a in key[i]["auto"] and key[i]["auto"][a] is not None]
            r[a] = sum(vals) / len(vals) if vals else None
            cells.append(f"{r[a]:.3f}" if vals else "-")
        result[run] = r
        print(f"| {run} | {len(ids)} | " + " | ".join(cells) + " |")
    # do the automatic scores track the labels? mean of each score on items labelled appropriate vs not
    track = {}
    for a in AUTO:
        yes = [key[i]["auto"][a] for i in key if labels[i]["appropriate_response"] and a in key[i]["auto"]]
        no = [key[i]["auto"][a] for i in key if not labels[i]["appropriate_response"] and a in key[i]["auto"]]
        if yes and no:
            track[a] = {"appropriate": sum(yes) / len(yes), "not_appropriate": sum(no) / len(no)}
            print(
                f"{a}: mean {track[a]['appropriate']:.3f} on appropriate responses, "
                f"{track[a]['not_appropriate']:.3f} on the rest"
            )
    if args.json:
        Path(args.json).write_text(json.dumps({"runs": result, "tracking": track}, indent=1) + "\n")


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("sample")
    s.add_argument("--run", action="append", required=True, help="NAME=RUN_DIR (repeat)")
    s.add_argument("--n", type=int, default=50)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--out", required=True)
    s.set_defaults(fn=sample)
    c = sub.add_parser("score")
    c.add_argument("folder")
    c.add_argument("--json")
    c.set_defaults(fn=score)
    args = ap.parse_args(argv)
    args.fn(args)


if __name__ == "__main__":
    main()
