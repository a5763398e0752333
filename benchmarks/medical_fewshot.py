"""A small few-shot medical comparison on real public data (read from ../shared/data, never copied into the repo).

150 training examples drawn (seeded) from Medical Meadow's WikiDoc patient QA (or ChatDoctor-5k) are split over 3
clients (Dirichlet over k-means clusters of MiniLM embeddings); each method is trained and its shared / private
adapters are evaluated on AlpaCare's MedInstruct-test against the gpt-3.5-turbo answers with the offline metrics
(Rouge-L, MiniLM cosine, reference loss). Everything goes through `fedpit compare`, so results.json, report.md and the
plots land in --out.

    .venv/bin/python benchmarks/medical_fewshot.py [--source medalpaca|chatdoctor]
        [--algorithms fedpit,fedit,locit,cenit]
        [--seeds 1] [--limit 60] [--out experiments/medical-fewshot]
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
from pathlib import Path

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
SOURCES = {
    "medalpaca": SHARED / "medalpaca" / "medical_meadow_small.json",
    "chatdoctor": SHARED / "chatdoctor" / "chatdoctor5k.json",
}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--source", choices=sorted(SOURCES), default="medalpaca")
    ap.add_argument("--n-train", type=int, default=150)
    ap.add_argument("--algorithms", default="fedpit,fedit,locit,cenit")
    ap.add_argument("--seeds", default="1")
    ap.add_argument("--limit", type=int, default=60, help="MedInstruct-test items evaluated (216 in all)")
    ap.add_argument("--max-new-tokens", type=int, default=128)
    ap.add_argument("--out", default="experiments/medical-fewshot")
    ap.add_argument("--set", dest="overrides", action="append", default=[])
    args = ap.parse_args()

    test = SHARED / "alpacare" / "MedInstruct-test.jsonl"
    if not SOURCES[args.source].is_file() or not test.is_file():
        print(f"needs {SOURCES[args.source]} and {test} (../shared/data beside the repository)", file=sys.stderr)
        return 2
    from fedpit.data import load_examples, save_jsonl

    pool = load_examples(SOURCES[args.source], on_duplicate="drop")
    train = random.Random(0).sample(pool, args.n_train)
    tmp = Path(tempfile.mkdtemp(prefix="fedpit-medfewshot-")) / f"{args.source}-{args.n_train}.jsonl"
    save_jsonl(train, tmp)  # a temporary file outside the repository
    print(f"{len(train)} training examples from {SOURCES[args.source].name} -> {tmp}")

    from fedpit.cli import main as cli

    argv = [
        "compare",
        "--algorithms",
        args.algorithms,
        "--seeds",
        args.seeds,
        "--out",
        args.out,
        "--test",
        str(test),
        "--reference",
        "gpt-3.5-turbo",
        "--limit",
        str(args.limit),
        "--max-new-tokens",
        str(args.max_new_tokens),
        "--set",
        f"data.train={tmp}",
        "--set",
        "data.test=",
        "--set",
        "partition.label=kmeans",
        "--set",
        "partition.num_clusters=10",
    ]
    for o in args.overrides:
        argv += ["--set", o]
    print("fedpit " + " ".join(argv))
    code = cli(argv)
    if code == 0:
        print(Path(args.out, "report.md").read_text())
    return code


if __name__ == "__main__":
    sys.exit(main())
