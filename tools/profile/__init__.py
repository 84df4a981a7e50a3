"""The bandwidth profiler, ``edgerec profile``: what an update costs per payload codec over emulated
device links (``edgerec profile update``), and what a fleet updating at once costs a server
(``edgerec profile fleet``).

The parts: :mod:`.device_probe` (the device side, in its own process), :mod:`.runner` (codec x
link runs) and :mod:`.report` (tables, JSON, CSV, plots); :mod:`.fleet` simulates many devices
at once against a running server. The links themselves (profiles, proxies, network namespaces)
come from :mod:`edgerec.tools.links`, which the fault runner shares.
"""
