"""What becomes of a queued call once its call ended (gateway/retries.py), and how items count in a bulk call's
progress (gateway/store/dispatchq.py)."""
from gateway.api.queue import OmniRetryConfig
from gateway.retries import RetryPolicy, settle
from gateway.store.dispatchq import progress


def test_answered_calls_complete_and_unanswered_ones_retry_while_attempts_are_left():
    policy = RetryPolicy(max_attempts=3, delay_seconds=60, on=("busy", "no-answer"))
    assert settle("completed", 1, policy) == "completed"
    assert settle("busy", 1, policy) == "retry"
    assert settle("no-answer", 2, policy) == "retry"
    assert settle("busy", 3, policy) == "failed"                   # the third call was the last
    assert settle("failed", 1, policy) == "failed"                 # not an outcome it retries
    assert settle("busy", 1, policy, may_retry=False) == "failed"  # its bulk call was cancelled
    assert settle("busy", 1, None) == "failed"                     # no policy: one call per contact
    assert settle("completed", 1, None) == "completed"


def test_the_stored_policy_round_trips():
    policy = RetryPolicy(2, 30.0, ("busy",))
    assert RetryPolicy.of(policy.as_dict()) == policy
    assert RetryPolicy.of(None) is None and RetryPolicy.of({}) is None


def test_omnidimension_retry_config_maps_onto_attempts_and_delay():
    assert OmniRetryConfig(auto_retry=False, retry_limit=3).policy() is None
    assert OmniRetryConfig(auto_retry=True, retry_limit=0).policy() is None
    assert OmniRetryConfig(auto_retry=True, retry_limit=2).policy() == RetryPolicy(3, 0.0)
    assert OmniRetryConfig(auto_retry=True, auto_retry_schedule="next_day", retry_limit=1).policy() == \
        RetryPolicy(2, 86400.0)
    assert OmniRetryConfig(auto_retry=True, auto_retry_schedule="scheduled_time", retry_schedule_days=1,
                           retry_schedule_hours=3, retry_limit=5).policy() == RetryPolicy(6, 97200.0)


def test_progress_counts():
    assert progress("queued", False) == "queued"
    assert progress("queued", True) == "retrying"
    assert progress("dispatching", True) == progress("dispatched", True) == "dialing"
    for final in ("completed", "failed", "cancelled"):
        assert progress(final, True) == final
