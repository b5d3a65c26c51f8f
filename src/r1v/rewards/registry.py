"""Rewards by name or by plug-in file, and weighted combinations of them.

A spec is either a built-in name (`"accuracy"`, `"format"`, `"length"`, `"repetition"`, `"hybrid"`,
`"r1v"`), a plug-in `"path/to/file.py:function"` (loaded by `r1v.plugins.load_callable`; the function
has the reward signature `fn(completion: str, columns: dict) -> dict[str, float] | float`), or a
callable. Keyword parameters given to `get_reward` are bound to the function (`get_reward("length",
max_tokens=4096)`). Every reward returned here gives a dict with "overall"; a plug-in returning a plain
number is wrapped as `{"overall": x}`.

`combine([("accuracy", 1.0), ("format", 0.5), ("length", 1.0, {"max_tokens": 4096})])` returns one reward
whose "overall" is the weighted sum and whose parts are `<name>` (that reward's overall) and
`<name>/<part>` (its other parts).
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from r1v.errors import ConfigError, R1VError
from r1v.plugins import load_callable
from r1v.rewards import rules
from r1v.rewards.rules import Parts, RewardFn

REWARDS: dict[str, RewardFn] = {
    "accuracy": rules.accuracy_reward,
    "format": rules.format_reward,
    "length": rules.length_penalty,
    "repetition": rules.repetition_penalty,
    "hybrid": rules.hybrid_reward,
    "r1v": rules.r1v_reward,
}


def register_reward(name: str) -> Callable[[RewardFn], RewardFn]:
    """Decorator adding a reward to the built-in names."""
    def add(fn: RewardFn) -> RewardFn:
        REWARDS[name] = fn
        return fn
    return add


def _checked(fn: Callable[..., Any], name: str) -> RewardFn:
    """Wrap a reward so it always returns a dict with a float "overall" (or fails naming `name`)."""
    @functools.wraps(fn)
    def reward(completion: str, columns: dict[str, Any]) -> Parts:
        out = fn(completion, columns)
        if isinstance(out, (int, float)) and not isinstance(out, bool):
            return {"overall": float(out)}
        if isinstance(out, Mapping) and "overall" in out:
            return {k: float(v) for k, v in out.items()}
        raise R1VError(f"reward {name!r} returned {type(out).__name__}; expected a number or a dict with 'overall'")
    return reward


def get_reward(spec: str | Callable[..., Any], **params: Any) -> RewardFn:
    """A reward function from a name, a `file.py:function` plug-in or a callable, with `params` bound."""
    if callable(spec):
        fn, name = spec, getattr(spec, "__name__", repr(spec))
    elif isinstance(spec, str) and spec in REWARDS:
        fn, name = REWARDS[spec], spec
    elif isinstance(spec, str) and ":" in spec:
        fn, name = load_callable(spec, "reward plug-in"), spec
    else:
        raise ConfigError(f"unknown reward {spec!r}: use one of {', '.join(sorted(REWARDS))} "
                          "or 'path/file.py:function'")
    if params:
        sig = inspect.signature(fn)
        takes_any = any(p.kind is p.VAR_KEYWORD for p in sig.parameters.values())
        unknown = [k for k in params if k not in sig.parameters and not takes_any]
        if unknown:
            raise ConfigError(f"reward {name!r} has no parameter(s) {', '.join(unknown)}; "
                              f"it takes: {', '.join(list(sig.parameters)[2:]) or 'none'}")
        fn = functools.partial(fn, **params)
    return _checked(fn, name)


def _spec_name(spec: str | Callable[..., Any]) -> str:
    if callable(spec):
        return getattr(spec, "__name__", "reward")
    return spec.rpartition(":")[2] if ":" in spec and spec not in REWARDS else spec


SpecItem = tuple[Any, float] | tuple[Any, float, dict[str, Any]]


def combine(specs_with_weights: Iterable[SpecItem] | Mapping[str, float]) -> RewardFn:
    """One reward: overall = sum(weight * reward.overall); parts `<name>` and `<name>/<part>`."""
    items = list(specs_with_weights.items()) if isinstance(specs_with_weights, Mapping) else list(specs_with_weights)
    if not items:
        raise ConfigError("combine() needs at least one reward")
    built: list[tuple[str, float, RewardFn]] = []
    for item in items:
        if not isinstance(item, tuple) or len(item) not in (2, 3):
            raise ConfigError(f"reward entry {item!r}: expected (spec, weight) or (spec, weight, params)")
        spec, weight = item[0], float(item[1])
        params = item[2] if len(item) == 3 else {}
        name = _spec_name(spec)
        if any(n == name for n, _, _ in built):
            name = f"{name}_{len(built)}"
        built.append((name, weight, get_reward(spec, **params)))

    def combined(completion: str, columns: dict[str, Any]) -> Parts:
        out: Parts = {"overall": 0.0}
        for name, weight, fn in built:
            parts = fn(completion, columns)
            out["overall"] += weight * parts["overall"]
            out[name] = parts["overall"]
            for k, v in parts.items():
                if k != "overall":
                    out[f"{name}/{k}"] = v
        return out

    return combined


@dataclass
class RewardItem:
    """One reward term of a stage's config: a built-in name (accuracy, format, length, repetition, hybrid,
    r1v) or a `path/file.py:function` plug-in, its weight and keyword parameters."""

    name: str = "accuracy"
    weight: float = 1.0
    params: dict[str, Any] = field(default_factory=dict)


def combine_items(items: Sequence[RewardItem]) -> RewardFn:
    """`combine` over config reward terms."""
    return combine([(r.name, r.weight, dict(r.params)) for r in items])
