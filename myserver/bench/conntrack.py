# -*- test-case-name: tests.test_bench -*-
"""
The kernel's connection tracking table, which can spoil a connect-rate run.

Where netfilter's connection tracking is loaded (any host whose firewall
has a NAT or stateful rule: a podman, Docker or Kubernetes host, most
firewalls), every loopback connection takes an entry too, and a closed one
keeps it for C{nf_conntrack_tcp_timeout_time_wait} (two minutes).  At tens
of thousands of connections a second the table fills within seconds, and
then the kernel drops new connections' SYNs ("nf_conntrack: table full,
dropping packet"): clients wait a second per retransmission and the rate
measured is the firewall's, a fraction of the server's, and varies from
run to run.  The bench checks the table around each connect-rate run and
refuses to report such a run.
"""

from __future__ import annotations

from pathlib import Path

from myserver.bench.load import LoadFailed

PROC = Path("/proc/sys/net/netfilter")

# Full, for this purpose: close enough to the limit that some SYNs of the run
# were likely dropped (entries expire all the time, so the count seldom
# shows the limit itself).
FULL = 0.95

HOW_TO_FIX = (
    "wait two minutes for its entries to expire, or (as root) let closed "
    "connections' entries expire at once: sysctl -w "
    "net.netfilter.nf_conntrack_tcp_timeout_time_wait=1, or raise "
    "net.netfilter.nf_conntrack_max"
)


def usage(proc: Path = PROC) -> tuple[int, int] | None:
    """
    How many entries the table holds and its limit, or L{None} where
    connection tracking is not loaded (nothing to check).
    """
    try:
        count = int((proc / "nf_conntrack_count").read_text())
        limit = int((proc / "nf_conntrack_max").read_text())
    except (OSError, ValueError):
        return None
    return count, limit


def checkRoom(proc: Path = PROC) -> None:
    """
    Raise if the table is (nearly) full.

    @raise LoadFailed: it is; the message says how to make room.
    """
    used = usage(proc)
    if used is None:
        return
    count, limit = used
    if limit and count >= FULL * limit:
        raise LoadFailed(
            f"the kernel's connection tracking table is full ({count} of "
            f"{limit} entries): it drops new connections, so a connect-rate "
            f"run would measure the firewall, not the server; {HOW_TO_FIX}"
        )
