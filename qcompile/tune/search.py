"""Which candidates to try next: the whole grid when it fits the trial budget, else an
evolutionary search (a random first population, then one-parameter mutations of the fastest)."""

from __future__ import annotations

import random

from .space import Space


def propose(space: Space, measured: list[tuple[dict, float | None]], trials: int, n: int,
            rng: random.Random) -> list[dict]:
    """Up to n new points. `measured` holds (point, time or None if the candidate failed)."""
    seen = [space.complete(p) for p, _ in measured]
    todo = [p for p in space.points() if p not in seen]
    budget = trials - len(measured)
    if budget <= 0 or not todo:
        return []
    n = min(n, budget)
    if len(space.points()) <= trials:              # small space: grid, default first
        return todo[:n]
    population = max(4, trials // 3)
    if len(measured) < population:
        return _sample(todo, n, rng, first=space.default())
    timed = sorted(((t, i) for i, (_, t) in enumerate(measured) if t is not None))
    parents = [seen[i] for _, i in timed[:3]]
    children = [q for p in parents for q in space.neighbours(p) if q not in seen]
    unique = [q for i, q in enumerate(children) if q not in children[:i]]
    rng.shuffle(unique)
    return (unique or _sample(todo, n, rng))[:n]


def _sample(todo: list[dict], n: int, rng: random.Random, first: dict | None = None) -> list[dict]:
    head = [first] if first in todo else []
    rest = [p for p in todo if p != first]
    return (head + rng.sample(rest, len(rest)))[:n]
