"""What a person reads while a command runs: one plain line per event, on stderr, never wrapped.

fedpit's modules log to ``fedpit.*`` loggers; the CLI calls :func:`setup`, which prints them as::

    14:02:11 round 1/3 client 0: 53 examples + 6 synthetic, 5 steps, loss 2.913, 21.4 s
    14:02:58 round 1/3: train loss 2.871, held-out loss 3.118, 66.0 s
    14:03:00 warning: runs/x/progress.json: missing; recovered from the committed rounds' checksums

No source-file markers, and each line is written whole wherever stderr goes (a terminal of any width, a file, a
pipe): never wrapped at 80 columns. In a terminal, lines appear above the progress bars (which share
:func:`console`). Levels: default, fedpit's progress (INFO) and everyone's warnings; ``quiet``, warnings and errors
only (a command's final line is printed, not logged, so it stays); ``verbose``, fedpit's debug lines (with the
logger's name) and other libraries' INFO.
"""

from __future__ import annotations

import functools
import logging
import sys
import time
import warnings

from rich.console import Console
from rich.text import Text

QUIET, NORMAL, VERBOSE = -1, 0, 1


@functools.cache
def console() -> Console:
    """The one stderr console of this process (progress bars and log lines share it). It looks ``sys.stderr`` up
    at every write, so a redirected stderr (a test's capture) is honoured."""
    return Console(stderr=True)


class LineFormatter(logging.Formatter):
    """``HH:MM:SS message``; ``warning:``/``error:`` before what needs attention; other libraries' lines and debug
    lines name their logger. Line breaks inside a message stay (a traceback under --verbose); nothing is wrapped."""

    def format(self, record: logging.LogRecord) -> str:
        msg = record.getMessage()
        if record.exc_info and record.levelno <= logging.DEBUG:
            msg += "\n" + self.formatException(record.exc_info)
        own = record.name == "fedpit" or record.name.startswith("fedpit.")
        if not own or record.levelno < logging.INFO:
            msg = f"{record.name}: {msg}"
        if record.levelno >= logging.WARNING or record.levelno < logging.INFO:
            msg = f"{record.levelname.lower()}: {msg}"
        return f"{time.strftime('%H:%M:%S', time.localtime(record.created))} {msg}"


class LineHandler(logging.Handler):
    """Writes each record as whole lines to the current ``sys.stderr``: through :func:`console` in a terminal (so
    lines land above live progress bars, soft-wrapped by the terminal only), as plain text anywhere else."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            line = self.format(record)
            c = console()
            if c.is_terminal:
                style = "yellow" if record.levelno == logging.WARNING else "red" if record.levelno > 30 else None
                c.print(Text(line, style=style or ""), soft_wrap=True, highlight=False)
            else:
                sys.stderr.write(line + "\n")
                sys.stderr.flush()
        except Exception:  # noqa: BLE001 - logging must never break the command
            self.handleError(record)


_saved: list[tuple[logging.Logger, int]] = []
_displaced: list[logging.Handler] = []
_showwarning: list = []


def _warning_line(message, category, filename, lineno, file=None, line=None) -> None:
    """A Python warning (a library's deprecation, say) as one log line, without its file:line and source."""
    text = " ".join(str(message).split())
    logging.getLogger("py.warnings").warning("%s: %s", category.__name__, text)


def setup(verbosity: int = NORMAL) -> LineHandler:
    """Route every logger to one :class:`LineHandler` at the levels of ``verbosity`` (QUIET, NORMAL, VERBOSE).
    Replaces a handler an earlier call installed; :func:`restore` undoes it (the CLI's ``main`` does, so calling it
    in-process, as tests do, leaves logging as it found it)."""
    restore()
    root, own = logging.getLogger(), logging.getLogger("fedpit")
    _saved.extend([(root, root.level), (own, own.level)])
    for h in [h for h in root.handlers if type(h) is logging.StreamHandler]:  # e.g. absl's basicConfig() at import
        _displaced.append(h)  # it would print every line a second time, as LEVEL:name:message
        root.removeHandler(h)
    handler = LineHandler()
    handler.setFormatter(LineFormatter())
    root.addHandler(handler)
    root.setLevel(logging.INFO if verbosity >= VERBOSE else logging.WARNING)
    _showwarning.append(warnings.showwarning)
    warnings.showwarning = _warning_line
    own.setLevel({QUIET: logging.WARNING, NORMAL: logging.INFO}.get(verbosity, logging.DEBUG))
    return handler


def restore() -> None:
    """Remove the handler :func:`setup` installed and put the levels back."""
    root = logging.getLogger()
    for h in [h for h in root.handlers if isinstance(h, LineHandler)]:
        root.removeHandler(h)
    while _saved:
        logger, level = _saved.pop()
        logger.setLevel(level)
    while _displaced:
        root.addHandler(_displaced.pop())
    while _showwarning:
        warnings.showwarning = _showwarning.pop()


__all__ = ["NORMAL", "QUIET", "VERBOSE", "LineFormatter", "LineHandler", "console", "restore", "setup"]
