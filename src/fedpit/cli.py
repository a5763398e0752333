"""The ``fedpit`` command line: run, partition, chat/generate, config."""

from __future__ import annotations

import argparse
import shlex
import sys

from . import __version__, logs
from .backbone import quiet_libraries
from .errors import FedpitError
from .extras import require


def _add_config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", "-c", metavar="FILE.toml", help="a TOML config (defaults: the embedded CPU demo)")
    p.add_argument(
        "--set",
        "-s",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override one setting, e.g. --set federation.rounds=5 (repeatable)",
    )


def _fmt_secs(s: float) -> str:
    m, s = divmod(int(round(s)), 60)
    return f"{m}m{s:02d}s" if m else f"{s}s"


def cmd_run(args) -> int:
    from .config import load_config
    from .runner import Runner, resume_config

    if args.resume is not None:
        if not args.resume.strip():
            raise FedpitError("--resume needs a run folder (e.g. runs/NAME), got ''")
        if args.config or args.overrides:
            raise FedpitError("--resume continues a run with its saved config.toml; drop --config/--set")
        cfg = resume_config(args.resume)
    else:
        cfg = load_config(args.config, args.overrides)
    import time

    t0 = time.perf_counter()
    runner = Runner(cfg, show_progress=not args.quiet)
    try:
        summary = runner.run(resume=args.resume)
    except KeyboardInterrupt:
        where = getattr(runner, "run_dir", None) or args.resume
        args.interrupt_hint = (
            f"resume with: fedpit run --resume {shlex.quote(str(where))}"
            if where
            else "no round had started; nothing to resume"
        )
        raise
    tl = [x for x in summary["test_loss_per_round"] if x is not None]
    losses = f"; held-out loss {tl[0]:.3f} -> {tl[-1]:.3f}" if len(tl) >= 2 else ""
    print(
        f"fedpit: done: {summary['algorithm']}, {summary['rounds']} rounds, {summary['num_clients']} clients in "
        f"{_fmt_secs(time.perf_counter() - t0)}, peak RSS {summary['peak_rss_mb'] / 1024:.2f} GB{losses}; "
        f"results in {summary['run_dir']} (final adapter: {summary['final_adapter']})"
    )
    return 0


def cmd_partition(args) -> int:
    from .config import load_config
    from .federation import prepare
    from .fsutil import check_writable_file
    from .partition import counts_text
    from .rundir import write_json

    cfg = load_config(args.config, args.overrides)
    if args.plot:
        require("matplotlib", "--plot")
    for opt, path in (("--json", args.json), ("--plot", args.plot)):
        if path:
            check_writable_file(path, opt)  # before the (possibly slow) split
    prep = prepare(cfg)
    part = prep.partition
    alpha = f", alpha {part.alpha}" if part.method == "dirichlet" else ""
    print(
        f"{len(prep.train)} examples from {cfg.data.train} -> {part.num_clients} clients "
        f"({part.method}{alpha}, labels: {part.label_source}, seed {cfg.seed})"
    )
    print(counts_text(part))
    if args.json:
        from pathlib import Path

        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        write_json(Path(args.json), part.to_dict())
        print(f"partition written to {args.json}")
    if args.plot:
        from .partition import plot_partition

        plot_partition(part, args.plot)
        print(f"plot written to {args.plot}")
    return 0


def cmd_chat(args) -> int:
    from .generate import answer, load_for_inference

    # everything the user typed is checked before the model loads (that takes seconds)
    if args.max_new_tokens < 1:
        raise FedpitError(f"--max-new-tokens must be >= 1, got {args.max_new_tokens}")
    if not args.repetition_penalty > 0:
        raise FedpitError(f"--repetition-penalty must be > 0, got {args.repetition_penalty}")
    if args.prompt is not None and not args.prompt.strip():
        raise FedpitError("--prompt is empty: give an instruction, or leave --prompt out to read them from stdin")
    first = None
    if args.prompt is None and not sys.stdin.isatty():
        first = next((line.strip() for line in sys.stdin if line.strip()), None)
        if first is None:
            raise FedpitError("no instruction on stdin (it was empty or held only blank lines)")
    model, tok, template = load_for_inference(args.adapter, model=args.model, dtype=args.dtype)
    kw = dict(template=template, max_new_tokens=args.max_new_tokens, repetition_penalty=args.repetition_penalty)
    if args.prompt is not None:
        print(answer(model, tok, args.prompt, args.input or "", **kw))
        return 0
    if first is not None:
        print(answer(model, tok, first, **kw), flush=True)
        for line in sys.stdin:
            if line.strip():
                print(answer(model, tok, line.strip(), **kw), flush=True)
        return 0
    print("Type an instruction (empty line or Ctrl-D to quit).")
    while True:
        try:
            line = input("> ").strip()
        except EOFError:
            break
        if not line:
            break
        print(answer(model, tok, line, **kw), flush=True)
    return 0


def cmd_evaluate(args) -> int:
    if args.benchmarks is not None:  # multiple-choice accuracy (fedpit.mcq); '' is an error there, not a fallback
        from .mcq import cli_evaluate

        return cli_evaluate(args)
    import json
    from pathlib import Path

    from .adapter_folder import read_adapter_folder
    from .data import load_demo, load_examples
    from .evaluate import engine_for, evaluate
    from .fsutil import check_writable_dir

    ev = _eval_options(args)
    examples = (
        load_demo("test") if ev.test == "demo" else load_examples(ev.test, format=ev.format, output_field=ev.reference)
    )
    if ev.limit:
        examples = examples[: ev.limit]
    out = Path(args.out or (Path(args.adapter) / "eval" if args.adapter else "eval-backbone"))
    check_writable_dir(out, "--out")  # before the model loads
    adapter = read_adapter_folder(args.adapter) if args.adapter else None  # read once, for the engine and the answers
    engine = engine_for(adapter, model=args.model, dtype=args.dtype)
    result = evaluate(
        engine,
        adapter,
        examples,
        max_new_tokens=ev.max_new_tokens,
        batch_size=ev.batch_size,
        judge=ev.judge,
        answers_dir=out,
    )
    result.save(out)
    print(json.dumps(result.metrics, indent=2))
    print(f"answers and metrics in {out}")
    return 0


def _eval_options(args, with_judge: bool = True):
    """The evaluation options of ``compare``/``sweep``/``frontier``; ``with_judge=False``: without the judge (a plan
    needs the test set, not a request to the judge)."""
    from .compare import EvalOptions

    judge = None
    if args.judge_url and with_judge:
        from .judge import Judge, JudgeConfig

        judge = Judge(
            JudgeConfig(
                base_url=args.judge_url,
                model=args.judge_model,
                protocol=args.judge_protocol,
                api_key_env=args.judge_key_env,
            )
        )
        judge.check()  # one cheap request now, not after every answer has been generated
    return EvalOptions(
        test=args.test,
        format=args.format,
        reference=args.reference,
        limit=args.limit,
        max_new_tokens=args.max_new_tokens,
        batch_size=args.batch_size,
        judge=judge,
    )


def cmd_compare(args) -> int:
    from datetime import datetime
    from pathlib import Path

    from .compare import check_audit, check_reuse, grid, parse_seeds, plan, run_experiment
    from .config import load_config

    if getattr(args, "benchmarks", None) is not None:  # names, protocol, extra: before hours of training
        from .mcq import check_args

        check_args(args)
    first = [] if args.audit else getattr(args, "overrides_first", [])  # --audit: the audit's extraction instead
    base = load_config(args.config, first + args.overrides)
    algorithms = [a.strip() for a in args.algorithms.split(",") if a.strip()]
    seeds = parse_seeds(args.seeds)
    if args.command == "frontier":  # methods, fedpit-mix over --betas, the baseline curves; the backbone's row
        from .compare import frontier_cells

        cells = frontier_cells(base, algorithms, seeds, args)
    else:
        cells = grid(base, algorithms, seeds, getattr(args, "set_values", None))
    out = Path(args.out or f"experiments/{datetime.now().strftime('%Y%m%d-%H%M%S')}-{args.command}")
    from .fsutil import check_writable_dir

    check_writable_dir(out, "--out")  # before any training
    check_reuse(cells, out)  # a finished run in --out is reused only with its own settings
    if args.audit:
        check_audit(cells, out)  # one [privacy] for every run, enough members and non-members
    print(
        plan(cells, audit=args.audit, ev=_eval_options(args, with_judge=False), command=args.command, out=out),
        flush=True,
    )
    if args.plan:
        return 0
    command = " ".join(shlex.quote(a) for a in ["fedpit", *args.argv])
    args.interrupt_hint = (
        "continue with: "
        + command
        + ("" if args.out else f" --out {shlex.quote(str(out))}")
        + " (finished runs and evaluations are reused)"
    )
    if getattr(args, "benchmarks", None):  # check the benchmark data before hours of training
        from .mcq import check_data

        check_data(args.benchmarks, args.benchmark_data)
    backbone = args.command == "frontier"
    ev = _eval_options(args)
    results = run_experiment(cells, out, ev, name=out.name, command=command, backbone=backbone, audit=args.audit)
    print(f"fedpit: {args.command} done: {len(cells)} runs; results in {results}, report in {out / 'report.md'}")
    if getattr(args, "benchmarks", None):
        from .mcq import cli_experiment
        from .report import write_report

        cli_experiment(args, results)
        write_report(results, benchmarks="all")  # the report again, with the accuracies
    return 0


def cmd_report(args) -> int:
    from .report import write_report

    files = write_report(args.results, benchmarks=args.benchmarks)
    print(f"report written: {files['md']} and {files['html']}")
    return 0


def cmd_audit(args) -> int:
    from .audit.run import audit

    audit(args.run_dir, client=args.client)
    return 0


def cmd_config(args) -> int:
    from .algorithms import get_method
    from .config import load_config, to_toml, valid_keys

    if args.keys:
        print("\n".join(valid_keys()))
        return 0
    cfg = load_config(args.config, args.overrides)
    get_method(cfg.algorithm)  # an unknown algorithm is a config error
    print(to_toml(cfg), end="")
    return 0


def _add_eval_args(p: argparse.ArgumentParser, test_default: str) -> None:
    p.add_argument(
        "--test",
        default=test_default,
        help="test set: 'demo', or an Alpaca/JSONL/MedInstruct file"
        + (" (default: each run's data.test)" if not test_default else ""),
    )
    p.add_argument("--format", default="auto", help="auto | alpaca | jsonl | medinstruct")
    p.add_argument(
        "--reference",
        default=None,
        help="which answer is the reference (MedInstruct: gpt-4, gpt-3.5-turbo, text-davinci-003, claude-2)",
    )
    p.add_argument("--limit", type=int, default=0, help="evaluate the first N test items (0 = all)")
    p.add_argument("--max-new-tokens", type=int, default=128)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--judge-url", help="OpenAI-compatible base URL (e.g. http://127.0.0.1:8011/v1) to run the judge")
    p.add_argument("--judge-model", default="gpt-4-0613")
    p.add_argument("--judge-protocol", default="fedpit", choices=["fedpit", "alpacare"])
    p.add_argument("--judge-key-env", default="OPENAI_API_KEY", help="environment variable holding the API key")


def cmd_flower(args) -> int:
    """fedpit on Flower: simulate, make certificates or node keys, or run on a localhost deployment."""

    if args.action == "certs":
        from .flower.deploy import make_certificates

        files = make_certificates(args.out, args.host, force=args.force)
        print(
            f"CA {files['ca']} (copy to every SuperNode), SuperLink certificate {files['cert']} and key "
            f"{files['key']}; keep {files['ca_key']} offline"
        )
        return 0
    if args.action == "keys":
        from .flower.deploy import make_node_keys

        for name, (priv, pub) in zip(args.names, make_node_keys(args.out, args.names, force=args.force)):
            print(
                f"{name}: private key {priv} (stays on that SuperNode), public key {pub} (register it on the SuperLink)"
            )
        return 0
    if args.action in ("node", "executor"):
        return _flower_site(args)
    from .config import load_config

    cfg = load_config(args.config, args.overrides)
    if args.action == "simulate":
        from .flower.simulation import simulate

        s = simulate(cfg)
        print(f"fedpit: done on Flower simulation: {s['algorithm']}, {s['rounds']} rounds; results in {s['run_dir']}")
        return 0
    return _flower_local(args, cfg)


def _flower_local(args, cfg) -> int:
    """A SuperLink and one site per client on 127.0.0.1 (TLS and node keys unless --insecure), the job, then stop."""
    from datetime import datetime
    from pathlib import Path

    from .config import to_toml
    from .federation import named
    from .flower.deploy import LocalCluster, repo_app_dir

    work = Path(args.workdir or f"flower-local-{datetime.now().strftime('%Y%m%d-%H%M%S')}").absolute()
    cfg = named(cfg, "flower")
    cfg.output_dir = str(Path(cfg.output_dir).absolute())
    work.mkdir(parents=True, exist_ok=True)
    cfg_file = work / "fedpit.toml"
    cfg_file.write_text(to_toml(cfg), encoding="utf-8")
    app = Path(args.app) if args.app else repo_app_dir()
    with LocalCluster(
        work,
        nodes=cfg.partition.num_clients,
        tls=not args.insecure,
        auth=not args.insecure,
        executor=not args.process_per_message,
        threads=args.threads,
    ) as c:
        security = "insecure" if args.insecure else "TLS, node keys"
        print(
            f"SuperLink 127.0.0.1:{c.port} and {c.nodes} SuperNodes up ({security}); logs in {c.logs}", file=sys.stderr
        )
        run_id = c.submit(app, {"config": str(cfg_file)})
        st = c.wait_run(run_id, timeout=args.timeout)
    if st.get("status") != "finished:completed":
        raise FedpitError(
            f"Flower run {run_id} {st.get('status')}: {st.get('status-details', '')} (logs in {work / 'logs'})"
        )
    print(f"fedpit: done on Flower deployment (run {run_id}); results in {Path(cfg.output_dir) / cfg.run_name}")
    return 0


def _flower_site(args) -> int:
    """``flower node`` (a site's SuperNode and its executor) and ``flower executor`` (the executor alone)."""
    if args.action == "node":
        from .flower.node import run_node

        return run_node(args.supernode_args, threads=args.threads, work_dir=args.work_dir)
    from .flower.executor import serve

    serve(
        threads=args.threads,
        parent_pid=args.parent_pid,
        task_file=args.task_file,
    )
    return 0


def _add_benchmark_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--benchmarks",
        metavar="LIST",
        help="multiple-choice accuracy instead of --test: any of pubmedqa,medqa,medmcqa (lm-eval tasks)",
    )
    p.add_argument(
        "--benchmark-data",
        metavar="DIR",
        help="folder with pubmedqa/ and medagents-benchmark/ (default: ../shared/data beside the checkout)",
    )
    p.add_argument(
        "--protocol",
        default="lm-eval",
        choices=["lm-eval", "flowertune-style"],
        help="lm-eval log-likelihood scoring (default) or FlowerTune-style generation",
    )


def _add_compare_parsers(sub) -> None:
    for name, helptext in (
        ("compare", "run methods x seeds on the same partition and budget, evaluate, report"),
        ("sweep", "like compare, over the values of one setting (--set-values key=v1,v2,...)"),
    ):
        p = sub.add_parser(name, help=helptext)
        _add_config_args(p)
        p.add_argument("--algorithms", default="fedpit,fedit,locit,cenit")
        p.add_argument("--seeds", default="1,2,3")
        if name == "sweep":
            p.add_argument("--set-values", required=True, metavar="KEY=V1,V2,...")
        p.add_argument("--out", help="experiment folder (default: experiments/<time>-<command>)")
        _add_experiment_args(p)
        _add_eval_args(p, test_default="")
        _add_benchmark_args(p)
        p.set_defaults(func=cmd_compare)


def _add_experiment_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--audit",
        action="store_true",
        help="audit every run (fedpit audit: membership inference, canary exposure, extraction) and put its figures "
        "in the results; every run is attacked with the one [privacy] setting of the config (privacy.holdout, "
        "privacy.canaries)",
    )
    p.add_argument("--plan", action="store_true", help="print the planned runs and estimated CPU minutes, then stop")


def _add_report_parser(sub) -> None:
    p = sub.add_parser("report", help="rebuild report.md/.html and plots from a results.json")
    p.add_argument("results")
    p.add_argument(
        "--benchmarks",
        nargs="?",
        const="all",
        metavar="LIST",
        help="the saved multiple-choice accuracies (all, or e.g. pubmedqa,medqa): RESULTS is an experiment with "
        "benchmarks/results.json (shown even without this option), or a results.json of fedpit evaluate --benchmarks",
    )
    p.set_defaults(func=cmd_report)


def _add_frontier_parser(sub) -> None:
    from . import compare as c

    p = sub.add_parser(
        "frontier",
        help="the privacy-utility frontier: methods (fedpit-mix over --betas), the baselines as curves (FedIT turned "
        "down, with fewer local steps, DP-SGD) and the bare backbone x seeds; utility against each privacy measure, "
        "which methods are dominated and by what, in one report and plot",
    )
    _add_config_args(p)
    p.add_argument("--algorithms", default=c.FRONTIER_METHODS)
    p.add_argument("--betas", default=c.FRONTIER_BETAS, metavar="B1,B2,...", help="fedpit.beta values for fedpit-mix")
    for flag, default, what in (
        ("--server-lrs", c.FRONTIER_SERVER_LRS, "FedIT turned down: federation.server_lr values in (0, 1)"),
        ("--local-steps", c.FRONTIER_LOCAL_STEPS, "FedIT with fewer steps: train.local_steps values"),
        ("--epsilons", c.FRONTIER_EPSILONS, "DP-SGD (fedit-dp): dp.target_epsilon values"),
    ):
        p.add_argument(flag, default=default, metavar="V1,V2,...", help=f"{what} ('' = no such curve)")
    p.add_argument(
        "--teacher-mixes",
        default="",
        metavar="M1,M2,...",
        help="fedpit with its private model as teacher (selfgen.responder=private, fedpit.shared_target=distill) "
        "at each fedpit.teacher_mix in [0, 1]: method points judged against the curves, run whether or not "
        "--algorithms lists fedpit (default '': none)",
    )
    p.add_argument(
        "--teacher-accumulate",
        default="",
        metavar="true",
        help="'true' adds the same teacher keeping every round's kept examples (selfgen.accumulate=true) at the "
        "config's fedpit.teacher_mix: one more method point (default '': none)",
    )
    p.add_argument("--seeds", default="1,2,3", help="seeds of the deciding cells (see --deciding)")
    p.add_argument("--sweep-seeds", metavar="S1,...", help="seeds of the other cells (default: --seeds)")
    p.add_argument(
        "--deciding",
        metavar="CELLS",
        help="the cells run with every --seeds: methods and curve points, e.g. fedit,fedpit,fedpit.beta=0.6,"
        "federation.server_lr=0.5,dp.target_epsilon=100 (default: every method, fedpit-mix at each beta, the "
        "teacher at each teacher_mix, the accumulating teacher)",
    )
    p.add_argument("--out", help="experiment folder (default: experiments/<time>-frontier)")
    _add_experiment_args(p)
    _add_eval_args(p, test_default="")
    p.set_defaults(func=cmd_compare, overrides_first=["eval.extraction_every_round=true"])


def _add_flower_parser(sub) -> None:
    p = sub.add_parser("flower", help="run on Flower: simulate | local (SuperLink + SuperNodes here) | certs | keys")
    fl = p.add_subparsers(dest="action", required=True)
    q = fl.add_parser("simulate", help="the job in Flower's simulation runtime (one virtual SuperNode per client)")
    _add_config_args(q)
    q = fl.add_parser(
        "local", help="start a SuperLink and one SuperNode per client on 127.0.0.1, run the job, stop them"
    )
    _add_config_args(q)
    q.add_argument("--workdir", help="certificates, keys, logs and Flower home (default: ./flower-local-<time>)")
    q.add_argument("--app", help="folder with the Flower app's pyproject.toml (default: this source checkout)")
    q.add_argument("--insecure", action="store_true", help="no TLS and no node keys (testing only)")
    q.add_argument("--timeout", type=float, default=3600.0, help="seconds to wait for the run")
    q.add_argument(
        "--threads", type=int, default=0, help="torch threads per site (default: the cores shared among the sites)"
    )
    q.add_argument(
        "--process-per-message",
        action="store_true",
        help="Flower's default: a fresh flwr-clientapp (imports, backbone load) for every message (slow)",
    )
    q = fl.add_parser(
        "node",
        help="a site: flower-supernode ARGS and a long-lived fedpit executor beside it that keeps the model loaded",
    )
    q.add_argument("--threads", type=int, default=0, help="torch threads for this site's training (0: torch's)")
    q.add_argument("--work-dir", help="the executor's bookkeeping (the message in progress; default: a temp folder)")
    q.add_argument("supernode_args", nargs=argparse.REMAINDER, help="-- then flower-supernode's arguments")
    q = fl.add_parser("executor", help="(started by `flower node`) serve the site's ClientApps from one process")
    q.add_argument("--threads", type=int, default=0)
    q.add_argument("--parent-pid", type=int, help="exit when this process does")
    q.add_argument("--task-file", help="where the message in progress is noted, to answer it after a crash")
    q = fl.add_parser("certs", help="make a CA and a SuperLink certificate")
    q.add_argument("--out", required=True, help="output folder")
    q.add_argument(
        "--host",
        action="append",
        default=[],
        help="the SuperLink's DNS name or IP as SuperNodes reach it (repeatable; 127.0.0.1 and localhost always)",
    )
    q.add_argument("--force", action="store_true", help="replace existing keys and certificates (default: refuse)")
    q = fl.add_parser("keys", help="make SuperNode authentication key pairs (ECDSA P-384, OpenSSH format)")
    q.add_argument("--out", required=True, help="output folder")
    q.add_argument("names", nargs="+", help="one name per SuperNode, e.g. hospital-a hospital-b")
    q.add_argument("--force", action="store_true", help="replace existing key files (default: refuse)")
    p.set_defaults(func=cmd_flower)


def _one_line(message: str) -> str:
    """The message with line breaks, other control characters and lone surrogates (from user input it quotes)
    escaped, so an error is always exactly one printable line."""
    return "".join(
        c if c.isprintable() or c == " " else c.encode("unicode_escape", "backslashreplace").decode("ascii")
        for c in message
    )


def _add_run_parser(sub) -> None:
    p = sub.add_parser("run", help="run a federated job (defaults: the embedded demo, 3 clients, on SmolLM2-135M)")
    _add_config_args(p)
    p.add_argument("--resume", metavar="RUN_DIR", help="continue an interrupted run after its last completed round")
    p.add_argument("--quiet", "-q", action="store_true", help="only warnings, errors and the final line")
    p.add_argument(  # also after `run`; SUPPRESS keeps `fedpit -v run` working
        "-v", "--verbose", action="store_true", default=argparse.SUPPRESS, help="add detail (debug lines)"
    )
    p.set_defaults(func=cmd_run)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fedpit", description=__doc__)
    parser.add_argument("--version", action="version", version=f"fedpit {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="add detail: debug lines (any command)")
    sub = parser.add_subparsers(dest="command", required=True)
    _add_run_parser(sub)

    p = sub.add_parser("partition", help="show how the data would be split across clients (per-label counts)")
    _add_config_args(p)
    p.add_argument("--json", metavar="FILE", help="also write the partition as JSON")
    p.add_argument("--plot", metavar="FILE.png", help="also draw the split (examples per client and label) as a PNG")
    p.set_defaults(func=cmd_partition)

    for name in ("chat", "generate"):
        p = sub.add_parser(name, help="answer instructions with the backbone plus a trained adapter")
        p.add_argument(
            "--adapter", "-a", metavar="PATH", help="adapter folder (e.g. runs/NAME/final); omit for the bare backbone"
        )
        p.add_argument("--model", help="backbone (default: the one the adapter was trained on)")
        p.add_argument("--prompt", "-p", help="one instruction; without it, read instructions from stdin")
        p.add_argument("--input", "-i", help="optional input/context for --prompt")
        p.add_argument("--max-new-tokens", type=int, default=200)
        p.add_argument("--repetition-penalty", type=float, default=1.1)
        p.add_argument("--dtype", default="auto")
        p.set_defaults(func=cmd_chat)

    _add_compare_parsers(sub)
    _add_frontier_parser(sub)

    _add_report_parser(sub)

    p = sub.add_parser(
        "audit",
        help="privacy audit of a finished run: membership inference, canary exposure and extraction for the shared, "
        "private and bare models, and canary secrets found in its outputs; writes RUN_DIR/audit.json",
    )
    p.add_argument("run_dir", metavar="RUN_DIR")
    p.add_argument("--client", type=int, metavar="K", help="only client K's private model, with client K's data")
    p.set_defaults(func=cmd_audit)

    p = sub.add_parser("evaluate", help="answer a test set with an adapter (or the bare backbone) and score it")
    p.add_argument("--adapter", "-a", metavar="PATH", help="adapter folder; omit for the bare backbone")
    p.add_argument("--model", help="backbone (default: the one the adapter was trained on)")
    p.add_argument("--dtype", default="auto")
    p.add_argument("--out", help="output folder (default: ADAPTER/eval)")
    _add_eval_args(p, test_default="demo")
    _add_benchmark_args(p)
    p.set_defaults(func=cmd_evaluate)

    _add_flower_parser(sub)

    p = sub.add_parser("config", help="print the resolved config as TOML (or --keys: every valid key)")
    _add_config_args(p)
    p.add_argument("--keys", action="store_true")
    p.set_defaults(func=cmd_config)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)  # what the report records as its command
    logs.setup(logs.QUIET if getattr(args, "quiet", False) else logs.VERBOSE if args.verbose else logs.NORMAL)
    try:
        quiet_libraries()
        return args.func(args)
    except FedpitError as e:
        print(f"fedpit: error: {_one_line(str(e))}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        hint = getattr(args, "interrupt_hint", None)
        print("fedpit: interrupted" + (f" ({hint})" if hint else ""), file=sys.stderr)
        return 130
    finally:
        logs.restore()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())


def run_main() -> None:  # console-script entry point
    sys.exit(main())
