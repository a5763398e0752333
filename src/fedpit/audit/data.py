"""The audit's data, decided once in the data preparation that every runtime shares.

- ``privacy.holdout``: a seeded share of ``data.train`` is held out of training; those examples are the
  non-members of membership inference, drawn from the same pool as the members (the clients' training examples).
- ``privacy.canaries``: canaries (:mod:`fedpit.audit.canaries`) are appended to the training list, after the
  members, ``privacy.canary_repeats`` copies each, and canary ``i``'s copies are given to client
  ``i mod num_clients`` in the partition (label ``canary``).

:func:`split_pool` is called by :func:`fedpit.federation.prepare`, :meth:`PrivateData.attach` at its end, and
:func:`training_set` by :func:`fedpit.federation.client_share` (a Flower node), so both runtimes train on the same
examples. At the defaults (holdout 0, no canaries) the training data is the pool itself, unchanged.
:meth:`PrivateData.write` records the held-out examples and the canaries (secrets) in the run folder, owner-only
(mode 600), for ``fedpit audit``.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ..data import Example
from ..errors import ConfigError, DataError
from ..fsutil import write_private_text
from .canaries import Canary, make_canaries

if TYPE_CHECKING:
    from ..config import Config
    from ..partition import Partition

HOLDOUT_TAG = 0x401D  # seeds the member/non-member split apart from every other use of cfg.seed
MIN_SPLIT = 10  # fewest members and non-members membership inference is run with
PRIVATE_DIR = "privacy"
HOLDOUT_FILE = f"{PRIVATE_DIR}/holdout.jsonl"
CANARY_FILE = f"{PRIVATE_DIR}/canaries.json"
CANARY_LABEL = "canary"


@dataclass
class PrivateData:
    """What the audit needs beside the training data: the held-out non-members and the canaries."""

    holdout: list[Example] = field(default_factory=list)
    canaries: list[Canary] = field(default_factory=list)
    members: int = 0  # training examples before the canaries (indices >= this in the training list are canaries)

    def copies(self, cfg: Config) -> list[Example]:
        """The canaries' training copies (``privacy.canary_repeats`` each), in the order they follow the members."""
        return [c.example for c in self.canaries for _ in range(cfg.privacy.canary_repeats)]

    def attach(self, prep):
        """``prep`` (a :class:`fedpit.federation.Prepared` over the members) with the canaries' copies appended to its
        training list and given to their clients in its partition, and this record kept on it."""
        part: Partition = prep.partition
        train, clients, labels = list(prep.train), [list(c) for c in part.clients], list(part.labels)
        for c in self.canaries:
            for _ in range(prep.cfg.privacy.canary_repeats):
                clients[c.client].append(len(train))
                train.append(c.example)
                labels.append(CANARY_LABEL)
        if self.canaries:
            prep.train, prep.partition = train, replace(part, clients=clients, labels=labels)
        prep.private = self
        return prep

    def write(self, run_dir: str | os.PathLike, cfg: Config) -> None:
        """The held-out examples and the canaries as owner-only files in the run folder (nothing when neither)."""
        if not self.holdout and not self.canaries:
            return
        folder = Path(run_dir) / PRIVATE_DIR
        folder.mkdir(mode=0o700, exist_ok=True)
        text = "".join(json.dumps(e.to_dict(), ensure_ascii=False) + "\n" for e in self.holdout)
        write_private_text(folder / Path(HOLDOUT_FILE).name, text)
        pv = cfg.privacy
        record = {
            "digits": pv.canary_digits,
            "repeats": pv.canary_repeats,
            "canaries": [c.to_dict() for c in self.canaries],
        }
        write_private_text(folder / Path(CANARY_FILE).name, json.dumps(record, indent=2) + "\n")


def held_out(holdout: float, n: int) -> int:
    """How many of a pool of ``n`` examples ``privacy.holdout`` keeps out of training as non-members."""
    return int(round(holdout * n)) if holdout > 0 else 0


def split_pool(cfg: Config, pool: list[Example]) -> tuple[list[Example], PrivateData]:
    """(members, private data): ``privacy.holdout`` of ``pool`` held out by a seeded draw (both parts keep the
    pool's order), and the run's canaries. At holdout 0 the members are ``pool`` itself. One-line errors when the
    split leaves fewer than 10 members or non-members, or the canaries have no room."""
    pv = cfg.privacy
    canaries = make_canaries(pv.canaries, pv.canary_digits, cfg.partition.num_clients, cfg.seed)
    private = PrivateData(canaries=canaries, members=len(pool))
    if pv.holdout <= 0:
        return pool, private
    n_out = held_out(pv.holdout, len(pool))
    if n_out < MIN_SPLIT or len(pool) - n_out < MIN_SPLIT:
        raise ConfigError(
            f"privacy.holdout: {pv.holdout} of the {len(pool)} examples of {cfg.data.train} gives {len(pool) - n_out} "
            f"members and {n_out} non-members; membership inference needs at least {MIN_SPLIT} of each"
        )
    out = np.zeros(len(pool), dtype=bool)
    out[np.random.default_rng([cfg.seed, HOLDOUT_TAG]).choice(len(pool), size=n_out, replace=False)] = True
    members = [e for e, o in zip(pool, out) if not o]
    private.holdout, private.members = [e for e, o in zip(pool, out) if o], len(members)
    return members, private


def training_set(cfg: Config, pool: list[Example]) -> list[Example]:
    """The list the run's ``partition.json`` indexes: the members of ``pool``, then the canaries' copies."""
    members, private = split_pool(cfg, pool)
    return members + private.copies(cfg)


def read_private(run_dir: str | os.PathLike, cfg: Config) -> PrivateData:
    """The held-out examples and canaries a run recorded (empty when its config asked for none); a one-line error
    naming a file the config says must be there and is missing or malformed."""
    run_dir, pv = Path(run_dir), cfg.privacy
    private = PrivateData()
    if pv.holdout > 0:
        f = run_dir / HOLDOUT_FILE
        rows = _read(f, "privacy.holdout > 0")
        try:
            private.holdout = [Example.from_dict(json.loads(line)) for line in rows.splitlines() if line.strip()]
        except (ValueError, KeyError, TypeError) as e:
            raise DataError(f, f"malformed held-out examples ({e})") from None
    if pv.canaries > 0:
        f = run_dir / CANARY_FILE
        try:
            record = json.loads(_read(f, "privacy.canaries > 0"))
            private.canaries = [Canary.from_dict(d) for d in record["canaries"]]
            recorded = (len(private.canaries), int(record["repeats"]), int(record["digits"]))
        except (ValueError, KeyError, TypeError) as e:
            raise DataError(f, f"malformed canary record ({e})") from None
        if recorded != (pv.canaries, pv.canary_repeats, pv.canary_digits):
            raise DataError(f, "its canaries, repeats or digits differ from the run's config.toml (privacy.*)")
        if any(len(c.secret) != pv.canary_digits or not c.secret.isdigit() for c in private.canaries):
            raise DataError(f, f"a canary's secret is not {pv.canary_digits} digits")
    return private


def _read(path: Path, why: str) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise DataError(path, f"missing, but the run's config has {why} (it is written when the run starts)") from None
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(path, f"unreadable ({e})") from None


__all__ = ["CANARY_FILE", "HOLDOUT_FILE", "MIN_SPLIT", "PrivateData", "read_private", "split_pool", "training_set"]
