"""``edgerec profile``: measure what an update costs per payload codec over emulated device links
(``edgerec profile update``), and what a fleet updating at once costs a server (``edgerec profile fleet``).

The parts: :mod:`.links` (named and custom link profiles), :mod:`.proxy` (a userspace TCP
proxy adding latency, loss and pacing), :mod:`.shaping` (a network namespace shaped by the
``tbf`` qdisc, or the proxy alone), :mod:`.device_probe` (the device side, in its own
process), :mod:`.runner` (codec x link runs) and :mod:`.report` (tables, JSON, CSV, plots);
:mod:`.fleet` simulates many devices at once against a running server.
"""
