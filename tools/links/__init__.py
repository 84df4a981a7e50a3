"""Link emulation: a device behind a slow, lossy or flaky link, on one machine.

Shared by the bandwidth profiler (:mod:`edgerec.tools.profile`) and the fault runner
(:mod:`edgerec.tools.faults`):

:mod:`.profiles`
    :class:`LinkProfile`: rate, RTT, loss and a cut every N bytes; named presets (2g, 3g, lte,
    satellite, wifi), ``key=value`` specs and TOML files of profiles.
:mod:`.proxy`
    :class:`TcpProxy`, the threaded TCP proxy both proxies below are, and the one set of
    :class:`LinkCounters` they keep.
:mod:`.cutting`
    :class:`LinkProxy`: counts bytes and cuts connections at chosen offsets (fault runs).
:mod:`.shaping`
    :class:`ShapingProxy`: latency, segment loss and pacing at a link rate, cutting at the
    point of delivery (profiles).
:mod:`.emulation`
    :class:`ShapedLink`: a profile made real, in a network namespace shaped by ``tbf`` (root)
    or by the shaping proxy alone, always taken down again.
"""

from edgerec.tools.links.cutting import LinkProxy
from edgerec.tools.links.emulation import ShapedLink
from edgerec.tools.links.profiles import PRESETS, LinkProfile, parse_link
from edgerec.tools.links.proxy import LinkCounters, TcpProxy
from edgerec.tools.links.shaping import Impairments, ShapingProxy

__all__ = [
    "PRESETS",
    "Impairments",
    "LinkCounters",
    "LinkProfile",
    "LinkProxy",
    "ShapedLink",
    "ShapingProxy",
    "TcpProxy",
    "parse_link",
]
