"""alerts stage of gridwatch: durable alerts, their lifecycle and the dispatch queues.

``alerts.dispatch.Dispatcher`` makes the rules engine's changes durable (alerts, audit,
queue items, MQTT outbox) and runs the timers (write-behind, escalation);
``alerts.service.AlertService`` is the scoped API of consoles and the CLI;
``alerts.plans`` holds the emergency plans file; ``alerts.mqtt`` publishes to integrators.
"""
