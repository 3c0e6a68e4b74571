"""Audit entries the alerts API does not write itself: silencing a device with open alerts.

A silence is stored with who and why (``silences``), but a dispatcher reading one alert's
trail would not see that someone muted its device. This thin addition writes one
``silenced`` / ``silence_ended`` event on each active alert of the device, in the alerts
helper's ``alert_events`` table, through its own ``storage.alerts.add_events``.
"""

from __future__ import annotations

from alerts.console.queries import ACTIVE_STATES
from alerts.model import Scope
from alerts.service import MAX_PAGE, AlertService
from storage import alerts as db


def note_device_alerts(
    service: AlertService, scope: Scope, device_id: str, *, user: str, action: str, note: str
) -> list[int]:
    """Add an audit event to every active alert of ``device_id``; returns their ids."""
    page = service.list_alerts(
        scope, device_id=device_id, states=list(ACTIVE_STATES), limit=MAX_PAGE
    )
    ids = [a.id for a in page.items]
    if not ids:
        return ids
    now = service.clock.now_ms()
    st = service.storage
    with st.connection() as conn:
        db.add_events(conn, st, [(i, now, user, action, None, None, None, note) for i in ids])
    return ids
