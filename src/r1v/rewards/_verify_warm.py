"""Preloaded by the verify pool's fork server: imports math-verify and warms it before workers fork.

Importing this module runs `r1v.rewards.verify.warm_up()`; it never raises (a failing preload would
stop the fork server), so at worst workers warm themselves.
"""

try:
    from r1v.rewards.verify import warm_up

    warm_up()
except Exception:  # pragma: no cover - defensive: the fork server must start regardless
    pass
