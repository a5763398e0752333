"""Split a data set over federated clients: IID, or non-IID by a Dirichlet prior over labels.

FedPIT partitions unlabeled instruction data by embedding every example, clustering the embeddings with k-means
(100 clusters) and using the cluster id as the label; :func:`dirichlet_split` then deals examples to clients
following Hsu et al. (2019), as FedLab does. Examples that carry a ``category`` can use it as the label instead.
"""

from __future__ import annotations

import io
import itertools
import math
import numbers
import os
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.table import Table
from rich.text import Text

from fedpit.embed import Embed
from fedpit.errors import ConfigError

METHODS = ("dirichlet", "iid")
LABELS = ("auto", "category", "kmeans", "none")


def _label_key(label: str) -> list[Any]:
    """Natural sort key: ``c2`` before ``c10``."""
    return [int(part) if i % 2 else part for i, part in enumerate(re.split(r"(\d+)", str(label)))]


def _sorted_labels(labels: Sequence[str]) -> list[str]:
    return sorted(set(labels), key=_label_key)


@dataclass
class Partition:
    """Which examples each client holds, and how the split was made."""

    method: str
    num_clients: int
    alpha: float | None
    seed: int
    label_source: str
    labels: list[str]
    clients: list[list[int]]

    def sizes(self) -> list[int]:
        """Number of examples per client."""
        return [len(c) for c in self.clients]

    def counts(self) -> dict[str, list[int]]:
        """Label -> number of examples of that label on each client (labels in natural order)."""
        table = {label: [0] * self.num_clients for label in _sorted_labels(self.labels)}
        for cid, indices in enumerate(self.clients):
            for i in indices:
                table[self.labels[i]][cid] += 1
        return table

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serializable dict; :meth:`from_dict` reads it back."""
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Partition:
        """Rebuild a partition written by :meth:`to_dict`, checking that it is consistent."""
        fields = ("method", "num_clients", "alpha", "seed", "label_source", "labels", "clients")
        missing = [f for f in fields if f not in d]
        if missing:
            raise ConfigError(f"partition is missing {', '.join(missing)}")
        try:
            part = cls(
                method=str(d["method"]),
                num_clients=int(d["num_clients"]),
                alpha=None if d["alpha"] is None else float(d["alpha"]),
                seed=int(d["seed"]),
                label_source=str(d["label_source"]),
                labels=[str(x) for x in d["labels"]],
                clients=[sorted(int(i) for i in c) for c in d["clients"]],
            )
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"malformed partition: {exc}") from None
        if len(part.clients) != part.num_clients:
            raise ConfigError(f"partition lists {len(part.clients)} clients but num_clients is {part.num_clients}")
        if sorted(i for c in part.clients for i in c) != list(range(len(part.labels))):
            raise ConfigError(f"partition clients do not hold each of the {len(part.labels)} examples exactly once")
        return part

    def subset(self, examples: Sequence[Any], client_id: int) -> list[Any]:
        """The examples of client ``client_id``, in index order."""
        if len(examples) != len(self.labels):
            raise ConfigError(f"partition is for {len(self.labels)} examples, got {len(examples)}")
        if not 0 <= client_id < self.num_clients:
            raise ConfigError(f"client id {client_id} is out of range 0..{self.num_clients - 1}")
        return [examples[i] for i in self.clients[client_id]]


def _check_int(name: str, value: Any, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise ConfigError(f"{name} must be an integer >= {minimum}, got {value!r}")


def _check_alpha(alpha: Any) -> None:
    if isinstance(alpha, bool) or not isinstance(alpha, numbers.Real) or not math.isfinite(alpha) or alpha <= 0:
        raise ConfigError(f"alpha must be a finite number > 0, got {alpha!r}")


def _client_sizes(n: int, num_clients: int) -> list[int]:
    """Equal sizes, the remainder spread one each over the first clients."""
    base, extra = divmod(n, num_clients)
    return [base + (k < extra) for k in range(num_clients)]


def iid_split(n: int, num_clients: int, seed: int) -> list[list[int]]:
    """Shuffle ``range(n)`` and cut it into ``num_clients`` near-equal parts (each sorted)."""
    _check_int("num_clients", num_clients, 1)
    _check_int("seed", seed, 0)
    order = np.random.default_rng(seed).permutation(n)
    bounds = np.cumsum([0, *_client_sizes(n, num_clients)])
    return [sorted(order[a:b].tolist()) for a, b in itertools.pairwise(bounds)]


def dirichlet_split(labels: Sequence[str], num_clients: int, alpha: float, seed: int) -> list[list[int]]:
    """Non-IID split of Hsu et al. (2019): client ``k`` draws label priors ``q_k ~ Dir(alpha * p)``.

    ``p`` is the global label frequency. Clients get equal sizes (within one). Until every client is full, a random
    non-full client draws a label from its ``q_k``, renormalized over labels with examples left, and receives a random
    unassigned example of that label. Large ``alpha`` gives near-IID clients; small ``alpha`` gives clients dominated
    by a few labels.

    With a small ``alpha`` a prior drawn in floating point is exactly zero on all but a label or two. When every label
    a client's prior puts mass on has run out, the client's preferences over the labels left are drawn afresh from
    ``Dir(alpha * p_left)``, in log space so that they cannot underflow: by the neutrality of the Dirichlet this is
    the distribution of its renormalized prior over those labels, so the client keeps concentrating on few labels
    (dealing its remaining examples IID instead, as earlier versions did, made a tiny alpha give near-IID clients).
    The redraw happens only in that case, so splits that never reach it are unchanged.
    """
    _check_int("num_clients", num_clients, 1)
    _check_alpha(alpha)
    _check_int("seed", seed, 0)
    rng = np.random.default_rng(seed)
    n = len(labels)
    clients: list[list[int]] = [[] for _ in range(num_clients)]
    if n == 0:
        return clients

    names = sorted(set(labels))
    index = {name: j for j, name in enumerate(names)}
    codes = np.array([index[x] for x in labels])
    remaining = np.bincount(codes, minlength=len(names)).astype(float)
    p = remaining / n

    priors = rng.dirichlet(alpha * p, size=num_clients)
    bad = ~np.isfinite(priors).all(axis=1) | (priors.sum(axis=1) <= 0)
    priors[bad] = p
    pools = [rng.permutation(np.flatnonzero(codes == j)).tolist() for j in range(len(names))]

    room = _client_sizes(n, num_clients)
    open_clients = [k for k in range(num_clients) if room[k] > 0]
    redrawn: dict[int, np.ndarray] = {}  # client -> log prior over the labels left when its own prior ran dry
    while open_clients:
        slot = int(rng.integers(len(open_clients)))
        k = open_clients[slot]
        if k in redrawn:
            weights = _weights_from_log(redrawn[k], remaining > 0)
        else:
            weights = priors[k] * (remaining > 0)
            if weights.sum() <= 0:
                redrawn[k] = _log_dirichlet(rng, alpha * p, remaining > 0)
                weights = _weights_from_log(redrawn[k], remaining > 0)
        cum = np.cumsum(weights)
        j = min(int(np.searchsorted(cum, rng.random() * cum[-1], side="right")), len(names) - 1)
        if weights[j] <= 0:  # a rounding edge at the very top of the range
            j = int(np.flatnonzero(weights)[-1])
        clients[k].append(pools[j].pop())
        remaining[j] -= 1
        room[k] -= 1
        if room[k] == 0:
            open_clients[slot] = open_clients[-1]
            open_clients.pop()
    return [sorted(c) for c in clients]


def _log_dirichlet(rng: np.random.Generator, concentration: np.ndarray, support: np.ndarray) -> np.ndarray:
    """Log of a ``Dir(concentration[support])`` draw (``-inf`` off the support), without underflow for tiny values.

    Uses ``Gamma(a) = Gamma(a + 1) * U**(1/a)``, i.e. ``log G = log Gamma(a + 1) + log(U) / a``.
    """
    logs = np.full(len(concentration), -np.inf)
    a = concentration[support]
    u = 1.0 - rng.random(len(a))  # in (0, 1]
    logs[support] = np.log(rng.standard_gamma(a + 1.0)) + np.log(u) / a
    return logs


def _weights_from_log(logs: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Unnormalized weights ``exp(logs - max)`` on ``mask`` (zero elsewhere); the largest is 1."""
    masked = np.where(mask, logs, -np.inf)
    return np.exp(masked - masked.max())


def kmeans_labels(texts: Sequence[str], num_clusters: int, seed: int, embed: Embed | None = None) -> list[str]:
    """Cluster the texts' embeddings with k-means; the labels are ``c0``, ``c1``, ... in order of first appearance.

    Each distinct text is embedded once and weighted by how often it occurs. ``embed`` maps a list of texts to an
    ``(n, d)`` array; by default the packaged MiniLM (:func:`fedpit.embed.minilm_embed`).
    """
    _check_int("num_clusters", num_clusters, 1)
    if not texts:
        return []
    from sklearn.cluster import KMeans

    if embed is None:
        from .embed import minilm_embed as embed

    counts = Counter(texts)
    distinct = list(counts)
    vectors = np.asarray(embed(distinct), dtype=np.float64)
    if vectors.ndim != 2 or vectors.shape[0] != len(distinct):
        raise ValueError(f"embed returned shape {vectors.shape} for {len(distinct)} texts")
    km = KMeans(n_clusters=min(num_clusters, len(distinct)), random_state=seed, n_init="auto")
    cluster = dict(zip(distinct, km.fit_predict(vectors, sample_weight=[counts[t] for t in distinct]), strict=True))
    names: dict[int, str] = {}
    for t in texts:
        names.setdefault(int(cluster[t]), f"c{len(names)}")
    return [names[int(cluster[t])] for t in texts]


def _check_split_args(n: int, method: str, label: str, num_clients, alpha, num_clusters, min_per_client, seed) -> None:
    """One-line ConfigErrors for split settings that cannot work, before anything is embedded or drawn."""
    if method not in METHODS:
        raise ConfigError(f"unknown partition method {method!r}; choose one of {', '.join(METHODS)}")
    if label not in LABELS:
        raise ConfigError(f"unknown label source {label!r}; choose one of {', '.join(LABELS)}")
    _check_int("num_clients", num_clients, 1)
    if method == "dirichlet":
        _check_alpha(alpha)
    _check_int("num_clusters", num_clusters, 1)
    _check_int("min_per_client", min_per_client, 0)
    _check_int("seed", seed, 0)
    if n < num_clients * min_per_client:
        raise ConfigError(f"{n} examples cannot give {num_clients} clients at least {min_per_client} each")


def make_partition(
    examples: Sequence[Any],
    *,
    num_clients: int = 3,
    method: str = "dirichlet",
    alpha: float = 1.0,
    label: str = "auto",
    num_clusters: int = 100,
    min_per_client: int = 1,
    seed: int = 0,
    embed: Embed | None = None,
) -> Partition:
    """Label the examples and split them over ``num_clients`` clients.

    ``label``: ``"category"`` uses each example's category; ``"kmeans"`` clusters ``instruction + "\\n" + input``;
    ``"none"`` (IID only) labels everything ``"all"``; ``"auto"`` uses categories when every example has one, else
    k-means for a Dirichlet split and ``"none"`` for an IID one.
    """
    examples = list(examples)
    n = len(examples)
    _check_split_args(n, method, label, num_clients, alpha, num_clusters, min_per_client, seed)
    lacking = sum(1 for ex in examples if not getattr(ex, "category", None))
    if label == "auto":
        label = "category" if n and not lacking else "kmeans" if method == "dirichlet" else "none"
    if label == "category" and lacking:
        raise ConfigError(f"label 'category' needs a category on every example; {lacking} of {n} lack one")
    if label == "none" and method == "dirichlet":
        raise ConfigError("a dirichlet split needs labels; use label 'auto', 'category' or 'kmeans'")

    if label == "category":
        labels = [str(ex.category) for ex in examples]
    elif label == "kmeans":
        labels = kmeans_labels([f"{ex.instruction}\n{ex.input}" for ex in examples], num_clusters, seed, embed)
    else:
        labels = ["all"] * n

    if method == "dirichlet":
        clients = dirichlet_split(labels, num_clients, float(alpha), seed)
    else:
        clients = iid_split(n, num_clients, seed)
    return Partition(
        method=method,
        num_clients=int(num_clients),
        alpha=float(alpha) if method == "dirichlet" else None,
        seed=int(seed),
        label_source=label,
        labels=labels,
        clients=clients,
    )


def format_counts(partition: Partition) -> Table:
    """A :class:`rich.table.Table` of examples per label (rows) and client (columns), with totals."""
    alpha = "" if partition.alpha is None else f", alpha={partition.alpha:g}"
    table = Table(title=f"{partition.method} split over {partition.num_clients} clients{alpha}")
    table.add_column(f"label ({partition.label_source})")
    for k in range(partition.num_clients):
        table.add_column(f"client {k}", justify="right")
    table.add_column("total", justify="right")
    counts = partition.counts()
    for i, (label, row) in enumerate(counts.items()):
        table.add_row(Text(label), *map(str, row), str(sum(row)), end_section=i == len(counts) - 1)
    sizes = partition.sizes()
    table.add_row("total", *map(str, sizes), str(sum(sizes)))
    return table


def counts_text(partition: Partition, width: int = 1000) -> str:
    """:func:`format_counts` rendered as plain text."""
    console = Console(record=True, width=width, file=io.StringIO())
    console.print(format_counts(partition))
    return "\n".join(line.rstrip() for line in console.export_text().splitlines()) + "\n"


def plot_partition(partition: Partition, path: str | os.PathLike) -> str:
    """Draw the split as a clients x labels heat map of example counts (with each client's total), as a PNG.

    Uses matplotlib's Agg backend (no display needed; the ``plots`` extra). Returns the path written."""
    from .extras import require

    require("matplotlib", "--plot")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    counts = partition.counts()
    labels = list(counts)
    grid = np.array([counts[label] for label in labels], dtype=int).T  # clients x labels
    k, m = grid.shape
    fig, ax = plt.subplots(figsize=(min(24.0, max(5.0, 0.5 * m + 2.5)), min(16.0, max(2.5, 0.45 * k + 1.6))))
    im = ax.imshow(grid, aspect="auto", cmap="Blues", interpolation="nearest")
    ax.set_yticks(range(k), [f"client {c} ({n})" for c, n in enumerate(partition.sizes())], fontsize=8)
    if m <= 60:
        ax.set_xticks(range(m), labels, rotation=60, ha="right", fontsize=7)
    else:
        ax.set_xticks([])
    ax.set_xlabel(f"label ({partition.label_source}, {m})")
    if m <= 25 and k <= 25:
        top = grid.max() or 1
        for (c, j), v in np.ndenumerate(grid):
            if v:
                ax.text(j, c, str(v), ha="center", va="center", fontsize=7, color="white" if v > top / 2 else "black")
    alpha = "" if partition.alpha is None else f", alpha {partition.alpha:g}"
    ax.set_title(
        f"{partition.method} split over {k} clients{alpha}, seed {partition.seed}: examples per label", fontsize=9
    )
    fig.colorbar(im, ax=ax, fraction=0.03, pad=0.02)
    fig.tight_layout()
    try:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=120, format="png")
    except OSError as e:
        raise ConfigError(f"--plot {path}: cannot write ({e.strerror or e})") from None
    finally:
        plt.close(fig)
    return str(path)
