"""ingest stage of gridwatch: MQTT / in-process transports, validation, dead letters and
columnar micro-batches (``docs/ingest.md``).

The transport-agnostic core is ``Collector``; ``ingest.mqtt`` (paho) and
``ingest.inprocess`` feed it, ``ingest.sinks`` says what it feeds. The MQTT front end is
not imported here, so embedding the collector does not load paho.
"""

from __future__ import annotations

from ingest.collector import Collector
from ingest.config import IngestConfig
from ingest.inprocess import InProcessTransport
from ingest.metrics import IngestMetrics
from ingest.sinks import BatchSink, DeadLetterSink, DurableSink, MemoryDeadLetters, MemorySink

__all__ = [
    "BatchSink",
    "Collector",
    "DeadLetterSink",
    "DurableSink",
    "InProcessTransport",
    "IngestConfig",
    "IngestMetrics",
    "MemoryDeadLetters",
    "MemorySink",
]
