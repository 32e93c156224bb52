"""Token generation over a built decoder's session: sampling, stopping and timing.

The library computes logits; choosing the next token is the app's policy, so it lives here (and in
the app), not in the artifact. numpy only.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable, Iterable

import numpy as np


@dataclass(frozen=True)
class Sampling:
    temperature: float = 0.0          # 0: greedy (argmax)
    top_k: int = 0                    # 0: no top-k cut
    top_p: float = 1.0                # 1: no nucleus cut
    seed: int | None = None

    def __post_init__(self) -> None:
        if self.temperature < 0 or self.top_k < 0 or not 0 < self.top_p <= 1:
            raise ValueError("temperature >= 0, top_k >= 0 and 0 < top_p <= 1 are required")


def sample(logits: np.ndarray, policy: Sampling, rng: np.random.Generator) -> int:
    """One token id from one row of logits."""
    if policy.temperature == 0:
        return int(np.argmax(logits))
    z = logits.astype(np.float64) / policy.temperature
    order = np.argsort(-z, kind="stable")
    if policy.top_k:
        order = order[:policy.top_k]
    p = np.exp(z[order] - z[order[0]])
    p /= p.sum()
    if policy.top_p < 1:
        keep = int(np.searchsorted(np.cumsum(p), policy.top_p)) + 1    # smallest prefix with mass >= top_p
        order, p = order[:keep], p[:keep] / p[:keep].sum()
    return int(order[rng.choice(len(order), p=p)])


@dataclass
class Generation:
    prompt: list[int]
    tokens: list[int] = field(default_factory=list)
    prefill_s: float = 0.0
    decode_s: float = 0.0
    stopped: str = "length"          # length | eos | context

    @property
    def prefill_tok_s(self) -> float:
        return len(self.prompt) / self.prefill_s if self.prefill_s else 0.0

    @property
    def decode_tok_s(self) -> float:
        # the first new token comes from the prefill's logits; each later one costs one decode step
        steps = max(len(self.tokens) - 1, 0)
        return steps / self.decode_s if self.decode_s else 0.0


def generate(session, prompt: Iterable[int], max_new_tokens: int, policy: Sampling = Sampling(),
             eos: Iterable[int] = (), on_token: Callable[[int], None] | None = None) -> Generation:
    """Prefill `prompt` into an empty `session`, then sample up to max_new_tokens."""
    prompt = [int(t) for t in prompt]
    if not prompt:
        raise ValueError("the prompt is empty: generation needs at least one token")
    stops, rng = set(eos), np.random.default_rng(policy.seed)
    out = Generation(prompt)
    session.reset()
    start = time.perf_counter()
    logits = session.prefill(prompt)
    out.prefill_s = time.perf_counter() - start
    start = time.perf_counter()
    while len(out.tokens) < max_new_tokens:
        token = sample(logits, policy, rng)
        out.tokens.append(token)
        if on_token:
            on_token(token)
        if token in stops:
            out.stopped = "eos"
            break
        if len(out.tokens) == max_new_tokens:
            break
        if session.position >= session.capacity:
            out.stopped = "context"
            break
        logits = session.decode(token)
    out.decode_s = time.perf_counter() - start
    return out
