"""The frontier's verdicts: is a method dominated by a baseline curve, does it dominate it, or do they tie?

A point is (privacy, utility), each a mean over seeds with its spread (one standard deviation). On the privacy axis
lower is better (an AUC nearer chance, fewer bits of exposure, less extraction); utility is higher-is-better or
lower-is-better (``higher``). A baseline is a curve: its points in the order of its knob, joined by straight lines
(a point between two runs of adjacent settings is read off the line between them).

- **dominated**: some point of the curve, one of its runs or a point on a line between two of them, is at least as
  good on both axes and better on one (on the means);
- **dominates**: not dominated, and the curve reaches the method's privacy: at equal privacy the method has more
  utility (the curve read at the method's privacy), or it is more private than the curve's most private point with
  at least that point's utility;
- **ties**: the means say one of the above, but the spreads overlap on both axes (the difference is within noise),
  or the means are equal;
- **no baseline in range**: the curve does not reach the method's privacy (it is more private than every baseline
  point and less useful than all, or it leaks more than every baseline point and is more useful than all).

This module is pure: numbers in, verdicts out.
"""

from __future__ import annotations

from dataclasses import dataclass

DOMINATED, DOMINATES, TIES, OUT_OF_RANGE = "dominated", "dominates", "ties", "no baseline in range"


@dataclass(frozen=True)
class Point:
    """A point on one privacy x utility plane: means and spreads (``sx``, ``sy``: one standard deviation)."""

    label: str
    x: float  # privacy measure: lower is more private
    y: float  # utility
    sx: float = 0.0
    sy: float = 0.0


@dataclass(frozen=True)
class Verdict:
    """A method against one baseline curve: the verdict, the curve's point it is read against (a run, or a point
    between two), what the means alone say (``dominated``, ``dominates``, ``equal`` or ``out of range``) and
    whether the spreads overlap on both axes."""

    verdict: str
    against: Point | None
    means: str
    within_noise: bool = False

    def text(self, curve: str) -> str:
        """One phrase, e.g. 'dominated by FedIT turned down (the line between η=0.5 and η=0.75)'."""
        at = f" ({self.against.label})" if self.against is not None else ""
        if self.verdict == DOMINATED:
            return f"dominated by {curve}{at}"
        if self.verdict == DOMINATES:
            return f"dominates {curve}{at}"
        if self.verdict == TIES:
            why = "equal means" if self.means == "equal" else f"{self.means} on the means"
            return f"ties with {curve}{at}, within noise ({why})"
        return f"{curve}: no point in range"


def _u(p: Point, higher: bool) -> float:
    return p.y if higher else -p.y


def _at_least_as_good(q: Point, p: Point, higher: bool) -> bool:
    """``q`` at least as good as ``p`` on both axes and better on one."""
    uq, up = _u(q, higher), _u(p, higher)
    return q.x <= p.x and uq >= up and (q.x < p.x or uq > up)


def within_noise(p: Point, q: Point) -> bool:
    """The spreads (mean ± one standard deviation) overlap on both axes."""
    return abs(p.x - q.x) <= p.sx + q.sx and abs(p.y - q.y) <= p.sy + q.sy


def between(a: Point, b: Point, x: float) -> Point:
    """The point of the line from ``a`` to ``b`` at privacy ``x`` (spreads interpolated alike)."""
    if a.x == b.x:
        return a
    t = (x - a.x) / (b.x - a.x)
    mix = lambda u, v: (1 - t) * u + t * v  # noqa: E731
    if t <= 0 or t >= 1:
        return a if t <= 0 else b
    return Point(f"the line between {a.label} and {b.label}", x, mix(a.y, b.y), mix(a.sx, b.sx), mix(a.sy, b.sy))


def curve_points(curve: list[Point], x: float) -> list[Point]:
    """The curve's runs, and where a line between two adjacent runs crosses privacy ``x``, that point: the only
    points of the curve that can be best at privacy ``x`` or below (the lines are straight)."""
    out = list(curve)
    for a, b in zip(curve, curve[1:]):
        if min(a.x, b.x) < x < max(a.x, b.x):
            out.append(between(a, b, x))
    return out


def _best(points: list[Point], p: Point, higher: bool) -> Point:
    """The strongest of ``points`` against ``p``: the most utility, then the most private."""
    return max(points, key=lambda q: (_u(q, higher), -q.x))


def verdict(p: Point, curve: list[Point], *, higher: bool) -> Verdict:
    """Method ``p`` against one baseline ``curve`` (its points in the order of its knob); see the module doc."""
    if not curve:
        return Verdict(OUT_OF_RANGE, None, "out of range")
    points = curve_points(curve, p.x)
    beating = [q for q in points if _at_least_as_good(q, p, higher)]
    if beating:
        clear = [q for q in beating if not within_noise(p, q)]
        q = _best(clear or beating, p, higher)
        return Verdict(DOMINATED if clear else TIES, q, DOMINATED, not clear)
    lo, hi = min(q.x for q in curve), max(q.x for q in curve)
    if lo <= p.x <= hi:  # the curve reaches p's privacy: read it there
        q = _best([q for q in points if q.x == p.x], p, higher)
        if _u(q, higher) == _u(p, higher):
            return Verdict(TIES, q, "equal")
    elif p.x < lo and any(_u(q, higher) <= _u(p, higher) for q in curve):
        q = _best([q for q in curve if _u(q, higher) <= _u(p, higher)], p, higher)
    else:
        return Verdict(OUT_OF_RANGE, None, "out of range")
    noise = within_noise(p, q)
    return Verdict(TIES if noise else DOMINATES, q, DOMINATES, noise)


def overall(verdicts: list[Verdict]) -> str:
    """A method's verdict against every baseline curve at once: dominated by any; else tied with any; else
    dominating any; else no baseline in range."""
    for v in (DOMINATED, TIES, DOMINATES):
        if any(x.verdict == v for x in verdicts):
            return v
    return OUT_OF_RANGE


__all__ = ["DOMINATED", "DOMINATES", "OUT_OF_RANGE", "TIES", "Point", "Verdict", "between", "overall", "verdict"]
