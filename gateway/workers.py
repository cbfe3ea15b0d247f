"""What worker k of a node listens on (`serve --workers N`, docs/deploy.md): its own SIP and TLS ports and RTP slice;
the HTTP port is shared. Used by the supervisor, by each worker for its own settings, and for Kamailio's list."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from .config import Settings


@dataclass(frozen=True)
class WorkerSlot:
    """What worker `index` of a node listens on."""
    index: int
    proc_id: str
    sip_port: int
    tls_port: int
    rtp_port_min: int
    rtp_port_max: int


def worker_slot(settings: Settings, index: int) -> WorkerSlot:
    """SIP port `sip_port + index`; TLS port `tls_port + N + index - 1` (with the defaults the N ports right after
    the workers' SIP ports: 5060 + N + index, never one of them); RTP slice `index` of [rtp_port_min,
    rtp_port_max] (even-sized, even start)."""
    n = max(settings.workers, 1)
    span = (settings.rtp_port_max - settings.rtp_port_min + 1) // n
    span -= span % 2
    if span < 2:
        raise ValueError(f"RTP range {settings.rtp_port_min}-{settings.rtp_port_max} is too small for {n} workers")
    start = settings.rtp_port_min + (index - 1) * span
    start += start % 2
    proc = dataclasses.replace(settings, worker_index=index).proc_id
    return WorkerSlot(index, proc, settings.sip_port + index, settings.tls_port + n + index - 1, start,
                      start + span - 1)


def worker_settings(settings: Settings) -> Settings:
    """The settings a worker runs with: its own SIP port and RTP slice (unchanged for a single process)."""
    if settings.worker_index <= 0:
        return settings
    slot = worker_slot(settings, settings.worker_index)
    return dataclasses.replace(settings, sip_port=slot.sip_port, tls_port=slot.tls_port,
                               rtp_port_min=slot.rtp_port_min,
                               rtp_port_max=slot.rtp_port_max)
