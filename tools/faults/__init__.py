"""Fault injection for device sync: dropped links, SIGKILLed syncs and a full disk, all real.

Run ``python -m edgerec.tools.faults --drops 200 --kills 100 [--registry DIR]``. It builds (or
takes) a registry with two versions of the reference model, serves it on loopback and runs:

drops
    Fresh devices sync the latest version through a :class:`~edgerec.tools.links.cutting.LinkProxy`
    that cuts the TCP connection at seeded random offsets (1-3 cuts, or every N bytes). Each
    sync must end with the registry's exact files, and the bytes the device received on the
    wire (every connection, framing included) must stay within ``max_overhead`` of the payload.
kills
    A device sync runs in a subprocess (``python -c``, rate-limited) and is SIGKILLed either at a
    seeded random wall-clock instant or at a seeded random line of one phase (download, patch,
    verify, switch; the child stops there and the parent kills it). Devices start with no model,
    with the old version active, or with the new one active but damaged (a repair). A fresh
    process on the same data dir must then predict from a fully verified model (old or new,
    every file's sha256 checked against the manifest and the registry) or have none if none
    was ever activated (or the active one is damaged), and complete the sync, resuming the
    ``.part`` download rather than restarting it. "Directed" kills stop at fixed lines around
    each rename and the switch, and also require that no download file is left behind.
disk-full
    The device data dir lives on a tmpfs (``mount -t tmpfs``, root only; skipped otherwise) too
    small for the update, at fill levels from empty to one page short (so every write in the
    pipeline runs out of space once), and with bytes to spare but no inode left (so the staging
    folder cannot be made): the sync must raise DiskFullError and leave the active model intact
    and loadable; once space is freed the sync must complete.
downloads
    Two processes sync one data dir at once: one installs, the other waits for it or gives up
    with SyncBusyError, and no ``.part`` ever outgrows its payload. A ``.part`` longer than its
    payload, or holding wrong bytes, is started over by the next sync, never an error. A hostile
    plan (a real server lying in its unsigned plan: a 2**40-byte payload, or payloads at their
    codec's bound, all zeros) on a tmpfs with room for the update: refused with a typed error,
    nothing kept in downloads, the active model intact; then the honest update installs there.

Prints a summary table; the exit code is non-zero on any failure. The runs exercise transport and
storage, not trust: devices sync from unsigned servers with verification off (``insecure=True``).

The modules: :mod:`.common` (registry, server, checks of an installed model, the summary table),
:mod:`.drops`, :mod:`.kills` (with the code of its child processes), :mod:`.disk` (with the
tmpfs helpers), :mod:`.downloads` and :mod:`.cli` (``main``). The names tests and callers use
are importable from this package.
"""

from edgerec.tools.faults.cli import FaultSettings, main, run
from edgerec.tools.faults.common import (
    MODEL,
    Summary,
    build_registry,
    format_summary,
    input_specs,
    installed_problems,
    leftover_files,
    local_prediction_problems,
    open_registry,
    predict_offline,
    serving,
    versions_under_test,
)
from edgerec.tools.faults.disk import (
    DiskFullReport,
    TmpfsUnavailable,
    leave_free,
    mount_tmpfs,
    run_disk_full,
    tmpfs,
    used_bytes,
)
from edgerec.tools.faults.downloads import (
    HOSTILE_CLAIMS,
    DownloadCase,
    DownloadsReport,
    concurrent_syncs,
    hostile_payload_then_legit,
    planned_update,
    run_downloads,
    stale_part,
)
from edgerec.tools.faults.drops import DropRun, DropsReport, run_drops
from edgerec.tools.faults.kills import (
    DIRECTED_KILLS,
    STARTS,
    KillBench,
    KillPoint,
    KillRun,
    KillsReport,
    run_directed_kills,
    run_kills,
)

__all__ = [
    "DIRECTED_KILLS",
    "HOSTILE_CLAIMS",
    "MODEL",
    "STARTS",
    "DiskFullReport",
    "DownloadCase",
    "DownloadsReport",
    "DropRun",
    "DropsReport",
    "FaultSettings",
    "KillBench",
    "KillPoint",
    "KillRun",
    "KillsReport",
    "Summary",
    "TmpfsUnavailable",
    "build_registry",
    "concurrent_syncs",
    "format_summary",
    "hostile_payload_then_legit",
    "input_specs",
    "installed_problems",
    "leave_free",
    "leftover_files",
    "local_prediction_problems",
    "main",
    "mount_tmpfs",
    "open_registry",
    "planned_update",
    "predict_offline",
    "run",
    "run_directed_kills",
    "run_disk_full",
    "run_downloads",
    "run_drops",
    "run_kills",
    "serving",
    "stale_part",
    "tmpfs",
    "used_bytes",
    "versions_under_test",
]
