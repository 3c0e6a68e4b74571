"""The running pipeline: the stages wired into the product ``gridwatch run`` starts.

One worker process (``pipeline.worker.Worker``) runs, per share of the district's grids::

    transport (MQTT, or the in-process queue fed by the built-in simulator)
      -> ingest.Collector (decode, validate, micro-batch; acknowledges after the sinks)
      -> DetectStage: detectors -> rules -> alerts.Dispatcher (durable alerts and queues)
      -> StorageStage: storage.ReadingWriter (delayed to a local backlog when behind)

``pipeline.supervisor`` starts N such workers (``--workers N``), checks their health and
restarts a dead one; ``pipeline.replay`` runs a labelled scenario through the same stages
as fast as possible and reports detection quality. See ``docs/operations.md``.
"""
