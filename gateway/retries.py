"""What becomes of a queued call once its call ended: answered, or tried again later, or given up.

A bulk call may carry a retry policy (docs/api.md, "Dispatch queue and bulk calls"): calls that ended with one of
`on` (by default no-answer, busy, failed — the outcomes OmniDimension's and other platforms' auto-retry cover) are
placed again `delay_seconds` after they ended, until `max_attempts` calls were placed for the contact. Each
attempt is its own call-log row (`attempt` 1, 2…). `settle` is the decision; the store applies it to every placed
item whose call ended (gateway/store/dispatchq.py, `settle_items`), whichever process placed it or runs the sweep.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal, get_args

#: call statuses a retry policy may name (the ones a call can end with without being answered)
RetryOn = Literal["no-answer", "busy", "failed", "rejected", "canceled"]
RETRYABLE: tuple[str, ...] = get_args(RetryOn)
DEFAULT_ON: tuple[RetryOn, ...] = ("no-answer", "busy", "failed")
#: most attempts a policy may ask for (OmniDimension allows 5 retries: 6 attempts; some room above)
MAX_ATTEMPTS = 10

Settled = Literal["completed", "failed", "retry"]


@dataclass(frozen=True)
class RetryPolicy:
    max_attempts: int = 1
    delay_seconds: float = 0.0
    on: tuple[str, ...] = DEFAULT_ON

    @classmethod
    def of(cls, raw: dict[str, Any] | None) -> RetryPolicy | None:
        """The policy stored on a bulk call (None: no retries)."""
        if not raw:
            return None
        return cls(int(raw.get("max_attempts") or 1), float(raw.get("delay_seconds") or 0.0),
                   tuple(raw.get("on") or DEFAULT_ON))

    def as_dict(self) -> dict[str, Any]:
        return {"max_attempts": self.max_attempts, "delay_seconds": self.delay_seconds, "on": list(self.on)}


def settle(outcome: str, attempts: int, policy: RetryPolicy | None, *, may_retry: bool = True) -> Settled:
    """The fate of an item whose call ended with `outcome` (its call_status) after `attempts` placed calls:
    `completed` when the call was answered, `retry` when the policy covers the outcome and attempts are left (and
    `may_retry`: its bulk call was not cancelled), else `failed`."""
    if outcome == "completed":
        return "completed"
    if may_retry and policy is not None and outcome in policy.on and attempts < policy.max_attempts:
        return "retry"
    return "failed"
