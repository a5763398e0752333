"""The in-process federated runner: every client of every round in this process, one after another.

The backbone is loaded once; clients and rounds swap adapter weights. What a round means (which clients, which
seeds, what is recorded, how the run folder is committed) lives in :mod:`fedpit.federation` and
:class:`fedpit.rundir.RunDir`, shared with the Flower runtime; this module is the loop::

    prepare -> engine -> start (or resume) the run folder -> for each round: clients train, server aggregates,
    evaluate, commit -> finish (final adapters, summary)

Each round and client gets a seed derived from (run seed, round, client), and all cross-round state (global adapter,
clients' private state) is committed to the run folder at the end of every round, so ``--resume`` reproduces an
uninterrupted run exactly.
"""

from __future__ import annotations

import logging
import time
from contextlib import nullcontext
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from .adapters import StateDict, nbytes
from .algorithms import ClientState, Method, get_method
from .config import Config
from .engine import Engine
from .federation import (
    Prepared,
    check_update,
    client_context,
    client_row,
    client_seed,
    encoded_test,
    evaluate_round,
    finish_run,
    make_engine,
    named,
    open_run,
    prepare,
    resume_config,
    round_plan,
    round_row,
    sample_clients,
    write_artifacts,
)
from .fsutil import check_writable_dir
from .logs import console as shared_console
from .rundir import RunDir, fault_point
from .selfgen import summary_line

TRANSPORT = "in-process"
log = logging.getLogger("fedpit.run")


class Runner:
    """Runs (or resumes) one federated job in this process."""

    def __init__(self, cfg: Config, *, console: Console | None = None, show_progress: bool = True):
        self.method: Method = get_method(cfg.algorithm)  # an unknown algorithm fails here, before anything is read
        self.generated_name = not cfg.run_name  # a generated name that is taken gets a suffix; an explicit one fails
        self.cfg = named(cfg)
        self.console = console or shared_console()
        self.show_progress = show_progress and self.console.is_terminal  # bars in a terminal, never in a log file

    def run(self, *, resume: str | Path | None = None, stop_after: int | None = None) -> dict:
        cfg = self.cfg
        t_start = time.perf_counter()
        prep = prepare(cfg)  # all input validation happens here, before anything is written
        if resume is None:
            check_writable_dir(cfg.output_dir, "output_dir")  # before the model loads, not after
        engine = make_engine(cfg)
        engine.encode(prep.train)  # tokenized once, up front: one warning counts every example cut to max_seq_len
        rd, start, global_state = open_run(cfg, engine, prep, resume, TRANSPORT, unique=self.generated_name)
        self.run_dir = rd.path  # for the CLI's interrupt hint
        test_enc = encoded_test(cfg, engine, prep)

        R = cfg.federation.rounds
        progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=self.console,
            disable=not self.show_progress,
            transient=False,
        )
        try:
            with progress if self.show_progress else nullcontext():
                rounds_task = progress.add_task("rounds", total=R, completed=start - 1)
                for r in range(start, R + 1):
                    global_state = self.round(r, rd, prep, engine, global_state, test_enc, progress)
                    progress.update(rounds_task, completed=r)
                    if stop_after is not None and r >= stop_after and r < R:
                        rd.set_progress(status="stopped")
                        return {"run_dir": str(rd.path), "completed_rounds": r, "status": "stopped"}
        except BaseException as e:
            rd.set_progress(
                status="interrupted" if isinstance(e, KeyboardInterrupt) else "failed", error=f"{type(e).__name__}: {e}"
            )
            raise
        return finish_run(
            cfg, self.method, engine, rd, prep, global_state, test_enc, transport=TRANSPORT, t_start=t_start
        )

    def round(
        self,
        r: int,
        rd: RunDir,
        prep: Prepared,
        engine: Engine,
        global_state: StateDict,
        test_enc: list,
        progress: Progress,
    ) -> StateDict:
        """One round: each sampled client trains (its private state from and back to its folder), the server
        aggregates the uploads, the new global adapter is evaluated, and the round is committed."""
        cfg, method = self.cfg, self.method
        t0 = time.perf_counter()
        chosen, lr = round_plan(cfg, method, r)
        down = nbytes(global_state) if method.shares_adapter else 0
        replies, rows = [], []
        fault_point(f"round_{r}_start")
        for k in chosen:
            reply, seconds = self.train_client(r, k, rd, prep, engine, global_state, progress)
            check_update(r, k, reply.adapter, reply.metrics)
            fault_point(f"round_{r}_client_{k}")
            replies.append(reply)
            rows.append(client_row(r, k, lr, reply, seconds=seconds, received=down, sent=nbytes(reply.adapter)))
        new_global = method.aggregate(cfg, global_state, replies)
        test_loss, extraction = evaluate_round(cfg, method, engine, rd, prep, r, new_global, test_enc)
        rows.append(
            round_row(
                r,
                lr,
                rows,
                chosen=chosen,
                trained=chosen,
                bytes_down=down * len(chosen),
                t0=t0,
                test_loss=test_loss,
                extraction=extraction,
            )
        )
        rd.commit_round(r, new_global, rows)
        log.info("%s", round_line(rows[-1], cfg.federation.rounds))
        return new_global

    def train_client(
        self, r: int, k: int, rd: RunDir, prep: Prepared, engine: Engine, global_state: StateDict, progress: Progress
    ):
        """Client ``k``'s update in round ``r``; its private state and local outputs stay in its own folder."""
        cfg, method = self.cfg, self.method
        examples = method.examples(prep.train, prep.partition, k)
        task = progress.add_task(f"round {r} client {k}", total=None)

        def on_step(step, total, loss):
            progress.update(task, completed=step, total=total, description=f"round {r} client {k} loss {loss:.3f}")

        f = rd.latest_client_state(k, r - 1)
        state = ClientState.load(f)
        tc = time.perf_counter()
        result = method.client_update(
            engine, global_state, examples, state, client_context(cfg, method, r, k), on_step=on_step
        )
        seconds = time.perf_counter() - tc
        if result.state:
            result.state.save(rd.client_state_file(k, r))
        write_artifacts(rd.client_round_dir(k, r), result.artifacts)
        progress.remove_task(task)
        m = result.reply.metrics
        synth = f" + {m['synthetic']} synthetic" if "synthetic" in m else ""
        loss = f"loss {m['loss']:.3f}" if m.get("steps") and isinstance(m.get("loss"), float) else "no loss"
        log.info(
            "round %d/%d client %d: %d examples%s, %d steps, %s, %.1f s",
            *(r, cfg.federation.rounds, k, len(examples), synth, m.get("steps", 0), loss, seconds),
        )
        if isinstance(m.get("selfgen"), dict):
            log.debug("round %d client %d %s", r, k, summary_line(m["selfgen"]))
        return result.reply, seconds


def round_line(row: dict, rounds: int) -> str:
    """The log line of a committed round: its training and held-out loss and its time."""
    tl, hl = row.get("train_loss"), row.get("test_loss")
    parts = [f"train loss {tl:.3f}" if tl is not None else "", f"held-out loss {hl:.3f}" if hl is not None else ""]
    parts.append(f"{row['seconds']:.1f} s")
    return f"round {row['round']}/{rounds}: " + ", ".join(x for x in parts if x)


def run(cfg: Config, **kw) -> dict:
    """Library entry point: ``fedpit.runner.run(load_config(...))``."""
    return Runner(cfg, show_progress=kw.pop("show_progress", False)).run(**kw)


__all__ = ["Runner", "run", "prepare", "resume_config", "sample_clients", "client_seed"]
