"""A long-lived ClientApp executor for one site: the backbone stays loaded between messages and runs.

Flower 1.41 runs every ClientApp message in a fresh ``flwr-clientapp`` process (``flwr/supernode/runtime/
run_clientapp.py`` pulls one task, calls the app, pushes the reply and exits), in both isolation modes: with
``--isolation subprocess`` the SuperNode's own ``flower-superexec`` spawns it; with ``--isolation process`` the
SuperNode only serves its Runtime API and an external executor has to take the tasks. A ``ClientApp`` lifespan hook
wraps one message, and ``Context.state`` holds records, not a model. So fedpit starts the SuperNode with
``--isolation process`` and this executor beside it (``fedpit flower node``): it takes the node's ClientApp tasks
from the Runtime API one after another (what ``flower-superexec`` would hand to a new process) and runs each with
Flower's own task code, in this one process. Flower loads the ClientApp module once per process (``load_app`` reuses
``sys.modules``), so :mod:`fedpit.flower.client_app`'s caches (backbone and engine, tokenized site data) live as long
as the executor: across the messages of a run and across runs. The app, the ``private_guard`` mod and the replies are
exactly those of the one-process-per-message path.

Tasks run one at a time, as the SuperNode hands them out (it waits for each reply before pulling the next message).
"""

from __future__ import annotations

import inspect
import json
import logging
import os
import sys
import time
from pathlib import Path

from ..fsutil import PRIVATE_MODE, write_atomic

log = logging.getLogger("fedpit.flower.executor")

CLIENT_APP = "flwr-clientapp"


def _client(address: str, certificates: bytes | None, token: str | None = None):
    from flwr.supercore.interceptors import RuntimeTokenHttpInterceptor, RuntimeVersionHttpInterceptor
    from flwr.supercore.retry import make_simple_http_retry_invoker
    from flwr.supercore.runtime import RuntimeHttpClient

    interceptors = [RuntimeVersionHttpInterceptor(component_name="SuperExec" if token is None else CLIENT_APP)]
    if token is not None:
        interceptors.append(RuntimeTokenHttpInterceptor(token))
    return RuntimeHttpClient.from_server_address(
        server_address=address,
        insecure=certificates is None,
        root_certificates=certificates,
        interceptors=interceptors,
        retry_invoker=make_simple_http_retry_invoker(),
    )


def _load_app(run, fab, installed: set[str]):
    """The run's ClientApp, its FAB unpacked once per FAB (Flower unpacks it for every message)."""
    from flwr.cli.install import install_from_fab
    from flwr.clientapp.utils import get_load_client_app_fn

    if fab.hash_str not in installed:
        install_from_fab(fab.content, skip_prompt=True)
        installed.add(fab.hash_str)
    return get_load_client_app_fn(default_app_ref="", app_path=None, multi_app=True)(
        run.fab_id, run.fab_version, fab.hash_str
    )


PULL_BACKOFF_S = (0.02, 0.25)  # first and longest wait between pulls of an object that is not there yet


def pull_task_input(client):
    """Flower's ``run_clientapp.pull_task_input`` with short waits: the SuperNode makes the task before it has
    downloaded the message's objects from the SuperLink, and Flower's backoff (1, 2, 4 s ...) is sized for a
    process that takes a second to start, not for an executor that asks at once (it cost about 7 s a message)."""
    from flwr.common.serde import context_from_proto, fab_from_proto, run_from_proto
    from flwr.proto.node_pb2 import Node
    from flwr.proto.runtime_pb2 import PullAppMessagesRequest, PullTaskInputRequest
    from flwr.supercore.inflatable.inflatable_protobuf_utils import (
        make_confirm_message_received_fn_protobuf,
        make_pull_object_fn_protobuf,
    )
    from flwr.supercore.inflatable.inflatable_utils import pull_and_inflate_object_from_tree
    from flwr.supercore.task_identity import TaskIdentity

    res = client.PullTaskInput(PullTaskInputRequest())
    TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = res.task_id, res.run.run_id, res.context.node_id
    context, run, fab = context_from_proto(res.context), run_from_proto(res.run), fab_from_proto(res.fab)
    msgs = client.PullMessages(PullAppMessagesRequest())
    if not msgs.messages_list:
        raise RuntimeError("No messages received from Runtime API")
    node, tree = Node(node_id=context.node_id), msgs.message_object_trees[0]
    from flwr.app import Message

    message = pull_and_inflate_object_from_tree(
        tree,
        make_pull_object_fn_protobuf(client.PullObject, node, context.run_id),
        make_confirm_message_received_fn_protobuf(client.ConfirmMessageReceived, node, context.run_id),
        return_type=Message,
        initial_backoff=PULL_BACKOFF_S[0],
        backoff_cap=PULL_BACKOFF_S[1],
    )
    message.metadata.__dict__["_message_id"] = tree.object_id  # as Flower does: the id is not in the content
    return message, context, run, fab


CRASH_REASON = "fedpit executor: the site's executor stopped during this message (restarted; the site is back)"


def _remember(task_file: Path | None, token: str, message, context) -> None:
    """Write the task in progress (its token and message header, nothing of the content) so that an executor
    started after a crash can answer it at once, instead of the SuperNode waiting for the task to lapse (60 s)."""
    from flwr.supercore.task_identity import TaskIdentity

    if task_file is None:
        return
    meta = {k.lstrip("_"): v for k, v in message.metadata.__dict__.items()}
    ids = {"run_id": context.run_id, "node_id": context.node_id, "task_id": TaskIdentity.task_id}
    write_atomic(task_file, json.dumps({"token": token, "metadata": meta, **ids}), PRIVATE_MODE)


def answer_orphan(address: str, certificates: bytes | None, task_file: Path) -> bool:
    """Reply with an error to the message a crashed executor held (so the server records a drop now) and close its
    task. False when there was none, or its token had already lapsed (Flower then answers it itself)."""
    from types import SimpleNamespace

    from flwr.app import Message, Metadata
    from flwr.app.error import Error
    from flwr.app.message.message import make_message
    from flwr.common.constant import ErrorCode, SubStatus
    from flwr.supercore.task_identity import TaskIdentity
    from flwr.supernode.runtime.run_clientapp import push_message, push_task_output

    if not task_file.is_file():
        return False
    held = json.loads(task_file.read_text(encoding="utf-8"))
    task_file.unlink()
    client = _client(address, certificates, held["token"])
    try:
        TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = (
            held["run_id"],
            held["node_id"],
            held["task_id"],
        )
        fields = inspect.signature(Metadata).parameters  # the header as Metadata takes it (not delivered_at ...)
        meta = Metadata(**{k: v for k, v in held["metadata"].items() if k in fields})
        asked = make_message(meta, content=None, error=Error(code=0, reason="placeholder"))
        reply = Message(Error(code=ErrorCode.CLIENT_APP_RAISED_EXCEPTION, reason=CRASH_REASON), reply_to=asked)
        push_message(client, reply, SimpleNamespace(run_id=held["run_id"], node_id=held["node_id"]))
        # no context: the node keeps the one it has (the dead executor never pushed its changes)
        push_task_output(client=client, context=None, sub_status=SubStatus.FAILED, details=CRASH_REASON)
        print(f"fedpit executor: answered the message a stopped executor held ({CRASH_REASON})", file=sys.stderr)
        return True
    except Exception as e:  # the token lapsed meanwhile: the SuperNode answers the message itself
        print(f"fedpit executor: could not answer the held message ({type(e).__name__}: {e})", file=sys.stderr)
        return False
    finally:
        client.close()


def run_task(
    address: str,
    token: str,
    certificates: bytes | None,
    installed: set[str],
    arrived: float,
    task_file: Path | None = None,
) -> bool:
    """One ClientApp task, as ``flwr-clientapp`` runs it (pull input, call the app, push reply and status), without
    exiting afterwards. True when the app replied without raising."""
    from flwr.app import Message
    from flwr.app.error import Error
    from flwr.clientapp.client_app import LoadClientAppError
    from flwr.common.constant import ErrorCode, SubStatus
    from flwr.supercore.heartbeat import HeartbeatSender, make_task_heartbeat_fn_http
    from flwr.supernode.runtime.run_clientapp import push_message, push_task_output

    from . import client_app

    client = _client(address, certificates, token)
    heartbeat = HeartbeatSender(make_task_heartbeat_fn_http(client))
    heartbeat.start()
    message = reply = context = None
    status, details = SubStatus.FAILED, "ClientApp task failed due to unknown reason"
    marks = [time.time()]
    try:
        message, context, run, fab = pull_task_input(client)
        _remember(task_file, token, message, context)
        marks.append(time.time())
        app = _load_app(run, fab, installed)
        marks.append(time.time())
        client_app.ARRIVED.set(arrived)
        client_app.RECEIVED.set(marks[1])
        reply = app(message=message, context=context)
        marks.append(time.time())
        status, details = SubStatus.COMPLETED, ""
    except Exception as ex:  # the same error reply flwr-clientapp makes
        log.exception("ClientApp raised")
        code = ErrorCode.LOAD_CLIENT_APP_EXCEPTION if isinstance(ex, LoadClientAppError) else None
        reason = f"{type(ex)}:<'{ex}'>"
        details = reason
        if message is not None:
            reply = Message(Error(code=code or ErrorCode.CLIENT_APP_RAISED_EXCEPTION, reason=reason), reply_to=message)
    finally:
        client_app.ARRIVED.set(None)
        client_app.RECEIVED.set(None)
        try:
            if reply is not None and context is not None:
                push_message(client, reply, context)
        except Exception:
            log.exception("pushing the reply failed")
            status = SubStatus.FAILED
        push_task_output(client=client, context=context, sub_status=status, details=details)
        if task_file is not None:
            task_file.unlink(missing_ok=True)
        if heartbeat.is_running:
            heartbeat.stop()
        client.close()
        _report(status, arrived, [*marks, time.time()])
    return status == SubStatus.COMPLETED


def _report(status: str, arrived: float, marks: list[float]) -> None:
    """One line per message in the site's log: where its time went."""
    steps = " ".join(f"{n} {b - a:.2f} s" for n, a, b in zip(("input", "app", "call", "reply"), marks, marks[1:]))
    print(f"fedpit executor: task {status}: since acquired {marks[0] - arrived:.2f} s, {steps}", file=sys.stderr)


def serve(
    address: str,
    *,
    root_certificates: str | None = None,
    poll_s: float = 0.05,
    threads: int = 0,
    parent_pid: int | None = None,
    task_file: str | Path | None = None,
    max_tasks: int = 0,
) -> None:
    """Take this node's ClientApp tasks from its Runtime API at ``address`` until stopped (or ``max_tasks``)."""
    from flwr.proto.runtime_pb2 import AcquireTaskRequest
    from flwr.supercore.app_utils import start_parent_process_monitor

    if parent_pid is not None:
        start_parent_process_monitor(parent_pid)

    if threads > 0:
        import torch

        torch.set_num_threads(threads)
    from . import client_app  # noqa: F401  (imports torch, transformers, peft once, before the first message)

    certificates = open(root_certificates, "rb").read() if root_certificates else None
    task_file = Path(task_file) if task_file else None
    if task_file is not None:
        answer_orphan(address, certificates, task_file)
    client = _client(address, certificates)
    installed: set[str] = set()
    done = 0
    log.info("fedpit executor %d serving %s", os.getpid(), address)
    try:
        while not max_tasks or done < max_tasks:
            res = client.AcquireTask(AcquireTaskRequest(supported_task_types=[CLIENT_APP]))
            if res.HasField("task") and res.token:
                run_task(address, res.token, certificates, installed, time.time(), task_file)
                done += 1
            else:
                time.sleep(poll_s)
    finally:
        client.close()


__all__ = ["answer_orphan", "pull_task_input", "run_task", "serve"]
