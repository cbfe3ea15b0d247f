"""The status vocabularies of calls and queued calls: names only, so the `gateway calls …` / `gateway calls queue …`
client can offer them as choices without importing the call machinery or the store (SQLAlchemy, numpy: most of
an API command's start-up)."""
from __future__ import annotations

from typing import Literal, get_args

#: every `call_status` a call-log row can hold (Twilio's vocabulary, which every carrier maps onto): the call-log
#: filter is checked against it, so a typo is a 400 instead of an empty page
CallStatus = Literal["queued", "initiated", "ringing", "in-progress", "completed", "busy", "no-answer", "canceled",
                    "failed", "rejected"]
CALL_STATUSES: tuple[str, ...] = get_args(CallStatus)

#: queued-call (dispatch queue) states that will not change any more
ITEM_FINAL = ("completed", "failed", "cancelled")
#: every state of a queued call
ITEM_STATUSES = ("queued", "dispatching", "dispatched", *ITEM_FINAL)
