"""``flower-supernode`` with shorter waits, for a site whose executor answers at once (``fedpit flower node``).

Flower 1.41's SuperNode sleeps 3 s after every pull that found no message, 0.5 s between checks for a reply, and
waits 1, 2, 4 ... s between pulls of a message object the SuperLink does not have yet (the ServerApp uploads it
just after the message). With a process per message those waits hide behind the process start; with a long-lived
executor they were most of a round's overhead. This entry point runs Flower's own ``flower_supernode`` with those
waits capped (0.5 s idle poll, 0.1 s reply check, 20-250 ms object backoff); nothing else changes.

    python -m fedpit.flower.supernode [flower-supernode arguments]
"""

from __future__ import annotations

import time
from functools import partial

IDLE_POLL_S = 0.5
REPLY_POLL_S = 0.1


class _ShortSleeps:
    """The ``time`` module as ``start_client_internal`` sees it, with ``sleep`` capped."""

    def __getattr__(self, name):
        return getattr(time, name)

    @staticmethod
    def sleep(seconds: float) -> None:
        time.sleep(min(seconds, IDLE_POLL_S if seconds >= 1 else REPLY_POLL_S))


def shorten_waits() -> None:
    from flwr.supercore.inflatable import inflatable_utils
    from flwr.supernode import start_client_internal as sci

    sci.time = _ShortSleeps()
    sci.pull_objects = partial(inflatable_utils.pull_objects, initial_backoff=0.02, backoff_cap=0.25)


def main() -> None:
    from flwr.supernode.cli.flower_supernode import flower_supernode

    shorten_waits()
    flower_supernode()


if __name__ == "__main__":
    main()
