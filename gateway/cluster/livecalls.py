"""Live calls of the other processes, from the call log: rows not yet ended whose owner is alive.

The API's `GET /api/v1/calls/live` and the live page show them next to this process's own calls. Meters (levels,
frame counters) exist only in the owning process, so a remote call carries None there; its duration is counted
from the row's answer (or creation) time.
"""
from __future__ import annotations

from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ..runtime import Gateway

METER_FIELDS = ("frames_in", "frames_out", "dropped_in", "dropped_out", "level_in", "level_out")


def row_view(row: dict[str, Any], node_id: str | None) -> dict[str, Any]:
    """A remote call in the shape of `Call.describe()`, plus its owner and node."""
    since = row.get("answered_at") or row.get("created_at")
    duration = 0.0
    if since:
        duration = max(0.0, (datetime.now(UTC) - datetime.fromisoformat(since)).total_seconds())
    transfer = None
    if row.get("is_call_transfer"):
        transfer = {"target": row.get("transfer_target"), "outcome": row.get("transfer_outcome") or "pending"}
    return {
        "call_id": row["call_uuid"], "id": row["id"], "carrier": row["channel_type"],
        "direction": row["call_direction"], "from_number": row.get("from_number"), "to_number": row.get("to_number"),
        "agent_id": row.get("agent_id"), "status": row.get("call_status"), "carrier_sid": row.get("carrier_sid"),
        "duration": round(duration, 1), "amd": row.get("amd_answered_by"), "transfer": transfer,
        "timing": row.get("timing"),   # written when the call ends; None while it is live elsewhere
        **{k: None for k in METER_FIELDS}, "owner": row.get("owner"), "node": node_id,
    }


async def remote_live_calls(gw: Gateway) -> list[dict[str, Any]]:
    """Calls held by the other live processes (none unless the store is shared: cluster mode)."""
    if not gw.control.clustered:
        return []
    me = gw.settings.proc_id
    nodes = {n["proc"]: n["node_id"] for n in await gw.store.list_nodes(gw.settings.stale_after)
             if n["alive"] and n["proc"] != me}
    return [row_view(r, nodes.get(r["owner"])) for r in await gw.store.open_calls(list(nodes))]
