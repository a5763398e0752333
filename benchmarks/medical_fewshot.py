"""A small few-shot medical comparison on real public data (read from ../shared/data, never copied into the repo).

``--source medinstruct-split`` (the synthetic-data study's benchmark, closest to the paper's MedInstruct setting):
AlpaCare's MedInstruct-test, 216 clinician-written, varied instructions, is split by a fixed seed (0) into 150
training examples (the gpt-4 answers as outputs) and 66 test items scored against the gpt-4 answers; the 150 are split
over 3 clients by Dirichlet over 10 k-means clusters of MiniLM embeddings. The runs' held-out loss after every round
is on all 66 test items.

``--source medalpaca|chatdoctor``: 150 training examples drawn (seeded) from Medical Meadow's WikiDoc patient QA (or
ChatDoctor-5k), evaluated on MedInstruct-test against the gpt-3.5-turbo answers.

Each method is trained and its shared / private adapters are evaluated with the offline metrics (Rouge-L, MiniLM
cosine, reference loss). Everything goes through `fedpit compare`, so results.json, report.md and the plots land in
--out. The drawn files are written to fedpit's cache folder (``$FEDPIT_CACHE_DIR`` or the user cache dir, outside the
repository), each named by its content's sha256: the runs name them in ``data.train``, so a later call with the same
draw (more seeds, more points, an audit) reuses the runs of an earlier one, and a different draw gets new runs.

    .venv/bin/python benchmarks/medical_fewshot.py [--source medinstruct-split|medalpaca|chatdoctor]
        [--algorithms fedpit,fedit,locit,cenit]
        [--seeds 1] [--limit 60] [--out experiments/medical-fewshot] [--set KEY=VALUE ...]

``--command frontier`` runs ``fedpit frontier`` on the same data instead of ``fedpit compare``; every option the
script does not know goes to that command as it is (``--audit``, ``--betas``, ``--deciding``, ``--plan``...). The
audit's membership pool is ``data.train`` split by ``privacy.holdout``, so more non-members come from drawing more
examples and holding more of them out, with the training set the same size. Medical Meadow has over 1,000 to draw:
1,150 drawn with 87% held out train on 150 and keep 1,000 non-members::

    .venv/bin/python benchmarks/medical_fewshot.py --source medalpaca --n-train 1150 --command frontier \
        --algorithms fedit,fedpit --seeds 1 --audit --set privacy.holdout=0.87 --betas '' --plan
"""

from __future__ import annotations

import argparse
import hashlib
import os
import random
import sys
from pathlib import Path

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
SOURCES = {
    "medalpaca": SHARED / "medalpaca" / "medical_meadow_small.json",
    "chatdoctor": SHARED / "chatdoctor" / "chatdoctor5k.json",
    "medinstruct-split": SHARED / "alpacare" / "MedInstruct-test.jsonl",
}
COMPARE_ALGORITHMS = "fedpit,fedit,locit,cenit"
SPLIT_SEED, SPLIT_TRAIN = 0, 150  # medinstruct-split: 150 training examples, the other 66 are the test set


def medinstruct_split(path: Path) -> tuple[list, list]:
    """MedInstruct-test (gpt-4 answers as outputs) split by a fixed seed into 150 training and 66 test examples."""
    from fedpit.data import load_examples

    items = load_examples(path, format="medinstruct", output_field="gpt-4")
    order = list(range(len(items)))
    random.Random(SPLIT_SEED).shuffle(order)
    return [items[i] for i in order[:SPLIT_TRAIN]], [items[i] for i in order[SPLIT_TRAIN:]]


def _stable_file(folder: Path, stem: str, examples: list) -> Path:
    """``examples`` as ``folder/<stem>-<sha256 of the content>.jsonl``: the same draw always gets the same path (a
    later call reuses the runs trained on it) and another draw another path (the runs' fingerprints tell them apart)."""
    from fedpit.data import save_jsonl

    tmp = folder / f".{stem}.{os.getpid()}.jsonl"
    save_jsonl(examples, tmp)
    digest = hashlib.sha256(tmp.read_bytes()).hexdigest()[:12]
    final = folder / f"{stem}-{digest}.jsonl"
    os.replace(tmp, final)
    return final


def fedpit_argv(args, extra: list[str], train: Path, test: Path, n_test: int | None) -> list[str]:
    """The ``fedpit compare|frontier`` command line for this data: the script's options, then ``extra`` as given."""
    split = n_test is not None
    compare = args.command == "compare"  # the frontier keeps its own defaults for what the script is not given
    algorithms = args.algorithms or (COMPARE_ALGORITHMS if compare else None)
    seeds = args.seeds or ("1" if compare else None)
    argv = [
        args.command,
        *(["--algorithms", algorithms] if algorithms else []),
        *(["--seeds", seeds] if seeds else []),
        "--out",
        args.out or f"experiments/medical-{'fewshot' if compare else 'frontier'}",
        "--test",
        str(test),
        *([] if split else ["--reference", "gpt-3.5-turbo"]),
        "--limit",
        str(args.limit),
        "--max-new-tokens",
        str(args.max_new_tokens),
        "--set",
        f"data.train={train}",
        "--set",
        f"data.test={test}" if split else "data.test=",
        *(["--set", f"eval.max_examples={n_test}"] if split else []),
        "--set",
        "partition.label=kmeans",
        "--set",
        "partition.num_clusters=10",
    ]
    for o in args.overrides:
        argv += ["--set", o]
    return argv + extra + (["--plan"] if args.plan else [])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0], allow_abbrev=False)  # the rest: fedpit's
    ap.add_argument("--source", choices=sorted(SOURCES), default="medalpaca")
    ap.add_argument("--n-train", type=int, default=150, help="examples drawn as data.train (medalpaca, chatdoctor)")
    ap.add_argument("--command", choices=("compare", "frontier"), default="compare", help="the fedpit command run")
    ap.add_argument("--algorithms", help=f"default: {COMPARE_ALGORITHMS} (compare), the frontier's own (frontier)")
    ap.add_argument("--seeds", help="default: 1 (compare), the frontier's own (frontier)")
    ap.add_argument("--limit", type=int, default=60, help="test items evaluated (0 = all; medinstruct-split: 66)")
    ap.add_argument("--max-new-tokens", type=int, default=128)
    ap.add_argument("--out", help="default: experiments/medical-fewshot (compare), experiments/medical-frontier")
    ap.add_argument("--plan", action="store_true", help="print the runs and their estimated minutes, run nothing")
    ap.add_argument("--set", dest="overrides", action="append", default=[])
    args, extra = ap.parse_known_args(argv)

    test = SHARED / "alpacare" / "MedInstruct-test.jsonl"
    if not SOURCES[args.source].is_file() or not test.is_file():
        print(f"needs {SOURCES[args.source]} and {test} (../shared/data beside the repository)", file=sys.stderr)
        return 2
    from fedpit.backbone import cache_root
    from fedpit.data import load_examples

    folder = cache_root() / "medical_fewshot"  # outside the repository, the same path on every call
    folder.mkdir(parents=True, exist_ok=True)
    split = args.source == "medinstruct-split"
    if split:
        train, test_items = medinstruct_split(test)
        test = _stable_file(folder, "medinstruct-test66", test_items)
    else:
        pool = load_examples(SOURCES[args.source], on_duplicate="drop")
        if not 0 < args.n_train <= len(pool):
            print(f"--n-train {args.n_train}: {SOURCES[args.source].name} has {len(pool)} examples", file=sys.stderr)
            return 2
        train = random.Random(0).sample(pool, args.n_train)
    tmp = _stable_file(folder, f"{args.source}-{len(train)}", train)
    print(f"{len(train)} training examples from {SOURCES[args.source].name} -> {tmp}")

    from fedpit.cli import main as cli

    cmd = fedpit_argv(args, extra, tmp, test, len(test_items) if split else None)
    print("fedpit " + " ".join(cmd))
    code = cli(cmd)
    if code == 0 and not args.plan:
        print(Path(cmd[cmd.index("--out") + 1], "report.md").read_text())
    return code


if __name__ == "__main__":
    sys.exit(main())
