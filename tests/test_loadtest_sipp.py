"""The load-test runner reads a real SIPp run's own statistics (SIPp UAC against a SIPp UAS on loopback)."""
import asyncio
import shutil
import socket

import pytest

from gateway.loadtest.sipp import check_loopback, run_sipp

pytestmark = pytest.mark.skipif(shutil.which("sipp") is None, reason="sipp not installed (apt-get install sip-tester)")


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def start_uas(port: int, calls: int, extra: list[str] | None = None):
    return await asyncio.create_subprocess_exec(
        "sipp", "-sn", "uas", "-i", "127.0.0.1", "-p", str(port), "-m", str(calls), "-timeout", "30s",
        "-nostdin", *(extra or []), stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL)


async def test_summary_counts_come_from_sipp_statistics(tmp_path):
    port = free_udp_port()
    uas = await start_uas(port, 20)
    try:
        await asyncio.sleep(0.3)
        seen = []
        result = await run_sipp(f"127.0.0.1:{port}", ["-sn", "uac", "-m", "20", "-r", "20", "-d", "100",
                                                     "-p", str(free_udp_port()), "-timeout", "30s"],
                                deadline_s=40, cwd=str(tmp_path), on_progress=seen.append)
    finally:
        if uas.returncode is None:
            uas.kill()
        await uas.wait()
    assert not result.killed and result.returncode == 0
    assert result.stats.created == 20
    assert result.stats.successful == 20 and result.stats.failed == 0
    assert len(result.response_times_ms) == 20
    assert result.percentile(99) is not None and result.percentile(99) < 1000
    assert seen, "progress was reported while SIPp ran"


async def test_dead_target_is_bounded_by_our_deadline(tmp_path):
    # nobody listens: SIPp retransmits; our deadline (not SIPp's) ends the run and failures are counted
    port = free_udp_port()
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    result = await run_sipp(f"127.0.0.1:{port}", ["-sn", "uac", "-m", "3", "-r", "10",
                                                 "-p", str(free_udp_port())],
                            deadline_s=3, cwd=str(tmp_path))
    assert loop.time() - t0 < 10
    assert result.killed or result.stats.successful == 0
    assert result.stats.successful == 0


def test_only_loopback_targets():
    check_loopback("127.0.0.1:5060")
    with pytest.raises(ValueError):
        check_loopback("10.0.0.5:5060")
