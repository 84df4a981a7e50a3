"""Puts a device behind an emulated link, and always takes the link down again.

Two methods:

``netns``
    (root, ``ip`` and ``tc``) The device runs in its own network namespace, joined to the
    host by a veth pair. A ``tbf`` qdisc on each end's egress sets the rate both ways; the
    device dials a :class:`~.shaping.ShapingProxy` on the host end of the pair (bound to that
    interface only), which adds latency and loss and forwards to the server on loopback.
``tokenbucket``
    Everything on loopback: the proxy paces both directions itself (token-bucket style
    serialisation at the link rate) and adds latency and loss.

With ``drop_every`` the proxy also cuts each connection once that many bytes reached the
device (see :mod:`.shaping` for why there). Namespaces and veth interfaces are
named ``edgerec-prof-<pid>-<n>`` and ``erp<pid hex>x<n hex>[hd]``: :func:`cleanup_leftovers`
removes those of processes that no longer exist.
"""

from __future__ import annotations

import contextlib
import functools
import ipaddress
import itertools
import logging
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Sequence
from types import TracebackType

from edgerec.tools.links.profiles import LinkProfile
from edgerec.tools.links.proxy import LinkCounters
from edgerec.tools.links.shaping import MSS, Impairments, ShapingProxy

log = logging.getLogger(__name__)

METHODS = ("auto", "netns", "tokenbucket")
NETNS_PREFIX = "edgerec-prof-"
_VETH = re.compile(r"erp([0-9a-f]+)x([0-9a-f]+)[hd]")
_NETNS = re.compile(rf"{re.escape(NETNS_PREFIX)}(\d+)-(\d+)")
_SUBNET = ipaddress.ip_network("10.213.0.0/16")
_FRAME_OVERHEAD = 66  # Ethernet 14 + IPv4 20 + TCP 20 + timestamps 12, per MSS-sized segment
_counter = itertools.count()


def _run(argv: Sequence[str]) -> str:
    """Run an ``ip``/``tc`` command; raise OSError with its message when it fails."""
    result = subprocess.run(list(argv), capture_output=True, text=True, timeout=30)
    if result.returncode != 0:
        raise OSError(f"{' '.join(argv)} failed: {result.stderr.strip() or result.returncode}")
    return result.stdout


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def list_namespaces(prefix: str = NETNS_PREFIX) -> list[str]:
    """Network namespaces whose name starts with ``prefix`` (empty when ``ip`` is missing)."""
    if shutil.which("ip") is None:
        return []
    try:
        out = _run(["ip", "netns", "list"])
    except (OSError, subprocess.TimeoutExpired):
        return []
    return [line.split()[0] for line in out.splitlines() if line.strip() and line.split()[0].startswith(prefix)]


def cleanup_leftovers() -> list[str]:
    """Delete namespaces and veth interfaces left by profile runs whose process is gone; return their names."""
    removed: list[str] = []
    if shutil.which("ip") is None or os.geteuid() != 0:
        return removed
    for name in list_namespaces():
        match = _NETNS.fullmatch(name)
        if match and not _alive(int(match.group(1))):
            with contextlib.suppress(OSError, subprocess.TimeoutExpired):
                _run(["ip", "netns", "delete", name])
                removed.append(name)
    with contextlib.suppress(OSError, subprocess.TimeoutExpired):
        for line in _run(["ip", "-o", "link", "show"]).splitlines():
            parts = line.split(":")
            if len(parts) < 2:
                continue
            name = parts[1].strip().split("@")[0]
            match = _VETH.fullmatch(name)
            if match and not _alive(int(match.group(1), 16)):
                with contextlib.suppress(OSError, subprocess.TimeoutExpired):
                    _run(["ip", "link", "delete", name])
                    removed.append(name)
    if removed:
        log.warning("removed leftovers of earlier profile runs: %s", ", ".join(removed))
    return removed


def _tbf(rate_bytes_per_s: float) -> list[str]:
    """A tbf qdisc at the rate: a burst of a few packets (4 ms at high rates), a queue of 100 ms."""
    burst = max(3 * (MSS + _FRAME_OVERHEAD), int(rate_bytes_per_s * 0.004))
    limit = max(128 * 1024, int(rate_bytes_per_s * 0.1))
    return ["tbf", "rate", f"{round(rate_bytes_per_s * 8)}bit", "burst", str(burst), "limit", str(limit)]


class Namespace:
    """A network namespace joined to the host by a veth pair, both ends shaped by tbf at ``rate``."""

    def __init__(self, rate_bytes_per_s: float) -> None:
        pid, n = os.getpid(), next(_counter)
        self.name = f"{NETNS_PREFIX}{pid}-{n}"
        self.host_if = f"erp{pid:x}x{n:x}h"
        self.device_if = f"erp{pid:x}x{n:x}d"
        self.host_ip, self.device_ip = _free_pair(pid, n)
        try:
            _run(["ip", "netns", "add", self.name])
            _run(["ip", "link", "add", self.host_if, "type", "veth", "peer", "name", self.device_if])
            _run(["ip", "link", "set", self.device_if, "netns", self.name])
            _run(["ip", "addr", "add", f"{self.host_ip}/30", "dev", self.host_if])
            _run(["ip", "link", "set", self.host_if, "up"])
            _run(["ip", "-n", self.name, "addr", "add", f"{self.device_ip}/30", "dev", self.device_if])
            _run(["ip", "-n", self.name, "link", "set", self.device_if, "up"])
            _run(["ip", "-n", self.name, "link", "set", "lo", "up"])
            _run(["tc", "qdisc", "add", "dev", self.host_if, "root", *_tbf(rate_bytes_per_s)])
            _run(["tc", "-n", self.name, "qdisc", "add", "dev", self.device_if, "root", *_tbf(rate_bytes_per_s)])
        except BaseException:
            self.delete()
            raise
        log.info("namespace %s: %s <-> %s, tbf at %.0f B/s", self.name, self.host_ip, self.device_ip, rate_bytes_per_s)

    def delete(self) -> None:
        """Remove the namespace and both veth ends (idempotent, never raises)."""
        with contextlib.suppress(OSError, subprocess.TimeoutExpired):
            _run(["ip", "netns", "delete", self.name])
        for name in (self.host_if, self.device_if):  # gone with the namespace unless setup stopped early
            result = subprocess.run(["ip", "link", "show", name], capture_output=True, timeout=30)
            if result.returncode == 0:
                with contextlib.suppress(OSError, subprocess.TimeoutExpired):
                    _run(["ip", "link", "delete", name])

    def command(self, argv: Sequence[str]) -> list[str]:
        return ["ip", "netns", "exec", self.name, *argv]


def _free_pair(pid: int, n: int) -> tuple[str, str]:
    """Host and device addresses of a /30 in 10.213.0.0/16 that no interface uses yet."""
    used = set(re.findall(r"inet (10\.213\.\d+\.\d+)", _run(["ip", "-4", "-o", "addr", "show"])))
    count = _SUBNET.num_addresses // 4
    for step in range(count):
        index = (pid * 131 + n * 7 + step) % count
        base = _SUBNET.network_address + index * 4
        host, device = str(base + 1), str(base + 2)
        if host not in used and device not in used:
            return host, device
    raise OSError("no free /30 left in 10.213.0.0/16")


@functools.cache
def netns_unavailable_reason() -> str | None:
    """Why the namespace method cannot run here (None when it can): checked by building one."""
    if not sys.platform.startswith("linux"):
        return "network namespaces need Linux"
    if os.geteuid() != 0:
        return "network namespaces and tc need root"
    missing = [tool for tool in ("ip", "tc") if shutil.which(tool) is None]
    if missing:
        return f"{' and '.join(missing)} not found"
    try:
        Namespace(125_000.0).delete()  # 1 Mbit/s
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"cannot build a shaped namespace: {exc}"
    return None


def resolve_method(method: str) -> str:
    """``auto`` becomes ``netns`` when possible, else ``tokenbucket``; ``netns`` raises when impossible."""
    if method not in METHODS:
        raise ValueError(f"unknown shaping method {method!r}; choose from {', '.join(METHODS)}")
    if method == "tokenbucket":
        return method
    reason = netns_unavailable_reason()
    if reason is None:
        return "netns"
    if method == "netns":
        raise OSError(f"cannot shape with a network namespace: {reason}")
    log.info("shaping with the userspace token bucket: %s", reason)
    return "tokenbucket"


class ShapedLink:
    """A link in place between a device and the server on ``127.0.0.1:server_port``.

    ``device_target`` is what the device dials; :meth:`command` wraps the device's command line
    (``ip netns exec`` for the namespace method); :meth:`close` takes everything down.
    """

    def __init__(self, profile: LinkProfile, server_port: int, method: str = "auto", *, seed: int = 0) -> None:
        self.profile = profile
        self.method = resolve_method(method)
        self._namespace: Namespace | None = None
        self._proxy: ShapingProxy | None = None
        upstream = ("127.0.0.1", server_port)
        # In a namespace tbf sets the rate and the proxy paces only when loss caps TCP below it.
        effective = profile.effective_rate_bytes_per_s
        pace = self.method == "tokenbucket" or effective < profile.rate_bytes_per_s
        impairments = Impairments(
            rtt_s=profile.rtt_s,
            rate_bytes_per_s=effective if pace else None,
            nominal_rate_bytes_per_s=profile.rate_bytes_per_s,
            loss=profile.loss,
            drop_every_bytes=profile.drop_every_bytes,
            seed=seed,
        )
        try:
            if self.method == "netns":
                self._namespace = Namespace(profile.rate_bytes_per_s)
                self._proxy = ShapingProxy(
                    upstream, impairments, listen_host=self._namespace.host_ip, bind_device=self._namespace.host_if
                )
            else:
                self._proxy = ShapingProxy(upstream, impairments)
        except BaseException:
            self.close()
            raise

    @property
    def device_target(self) -> str:
        assert self._proxy is not None
        return self._proxy.address

    @property
    def wire_factor(self) -> float:
        """Bytes the rate limiter counts per byte of TCP payload (tbf sees whole frames)."""
        return (MSS + _FRAME_OVERHEAD) / MSS if self.method == "netns" else 1.0

    @property
    def namespace(self) -> str | None:
        return self._namespace.name if self._namespace else None

    def command(self, argv: Sequence[str]) -> list[str]:
        return self._namespace.command(argv) if self._namespace else list(argv)

    def counters(self) -> LinkCounters:
        return self._proxy.stats() if self._proxy else LinkCounters()

    def close(self) -> None:
        """Stop the proxy and delete the namespace (the namespace goes even if the proxy fails to stop)."""
        try:
            if self._proxy is not None:
                self._proxy.close()
        finally:
            if self._namespace is not None:
                self._namespace.delete()

    def __enter__(self) -> ShapedLink:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
