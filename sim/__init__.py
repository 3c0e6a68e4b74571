"""The fleet simulator: a district's devices, their physics, labelled faults, replay over MQTT.

``engine.FleetSim`` generates readings (numpy, per 1-second tick); ``faults`` holds the
ground-truth vocabulary; ``replay``/``publish`` pace and send them. See docs/simulator.md.
"""

from __future__ import annotations
