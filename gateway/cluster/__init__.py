"""The cluster layer (docs/deploy.md): who owns a call, how commands reach it, and what happens when a process
dies. The core uses it through `Gateway.control` (a `ControlBus`) and `Gateway.membership`."""
from .control import ControlBus, LocalControl, PgControl, Reply, channel_for, make_control
from .membership import Membership

__all__ = ["ControlBus", "LocalControl", "PgControl", "Reply", "channel_for", "make_control", "Membership"]
