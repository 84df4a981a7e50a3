"""CPU time and memory of a process during a fleet run, read from Linux ``/proc``.

The server's, when its pid is given (what delivering the bytes cost it), and the simulator's own:
on a small machine the two share the cores, and the reader should see how much the simulator took.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class ProcessSample:
    """One reading: seconds since the fleet started, CPU seconds used so far, resident bytes now."""

    t_s: float
    cpu_s: float
    rss_bytes: int


def read_process(pid: int) -> tuple[float, int, int] | None:
    """(user + system CPU seconds, RSS bytes, peak RSS bytes) of ``pid``; None once it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    # The command name (field 2) may hold spaces and parentheses: fields after its closing one are fixed.
    fields = stat.rsplit(")", 1)[1].split()
    cpu_s = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    memory = {}
    for line in status.splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            memory[key] = int(value.split()[0]) * 1024  # reported in kB
    return cpu_s, memory.get("VmRSS", 0), memory.get("VmHWM", 0)


@dataclass
class SampledUsage:
    """What a sampler saw: the CPU seconds used between its first and last reading, the peak RSS."""

    samples: list[ProcessSample] = field(default_factory=list)
    cpu_s: float = 0.0
    peak_rss_bytes: int = 0
    exited: bool = False  # the process was gone before the sampler stopped


class ProcessSampler:
    """Reads one process every ``interval_s`` while the fleet runs (an asyncio task of the fleet's loop)."""

    def __init__(self, pid: int, interval_s: float) -> None:
        self.pid = pid
        self.epoch = 0.0
        self.interval_s = interval_s
        self.usage = SampledUsage()
        self._first_cpu_s: float | None = None
        self._task: asyncio.Task[None] | None = None

    def check(self) -> None:
        """Raise ProcessLookupError unless the process can be read now."""
        if read_process(self.pid) is None:
            raise ProcessLookupError(f"cannot read /proc/{self.pid}: no such process, or not Linux")

    def start(self, epoch: float) -> None:
        """Sample from now on; times are seconds since ``epoch`` (time.monotonic)."""
        self.epoch = epoch
        self._sample()
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> SampledUsage:
        """Stop sampling; take one last reading."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self._sample()
        return self.usage

    async def _run(self) -> None:
        while not self.usage.exited:
            await asyncio.sleep(self.interval_s)
            self._sample()

    def _sample(self) -> None:
        reading = read_process(self.pid)
        if reading is None:
            self.usage.exited = True
            return
        cpu_s, rss, peak = reading
        if self._first_cpu_s is None:
            self._first_cpu_s = cpu_s
        self.usage.samples.append(ProcessSample(time.monotonic() - self.epoch, cpu_s, rss))
        self.usage.cpu_s = cpu_s - self._first_cpu_s
        self.usage.peak_rss_bytes = max(self.usage.peak_rss_bytes, peak, rss)


@dataclass(frozen=True)
class OwnUsage:
    """This process's CPU seconds so far and its peak RSS (both include every thread, gRPC's too)."""

    cpu_s: float
    peak_rss_bytes: int

    @classmethod
    def now(cls) -> OwnUsage:
        # /proc's peak, not getrusage's ru_maxrss: a process started by fork and exec inherits its
        # parent's ru_maxrss, while VmHWM belongs to this process's own memory.
        reading = read_process(os.getpid())
        return cls(time.process_time(), reading[2] if reading is not None else 0)
