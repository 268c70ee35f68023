"""The one call the rest of FlowStone makes: ``notifier.notify(event)``.

It writes the event to the outbox for every configured channel and, when asked, flushes what
is due. Keeping enqueue and delivery apart is what makes delivery durable.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime

from flowstone.notifications.channels import Channel
from flowstone.notifications.events import Notification
from flowstone.notifications.outbox import FlushReport, Outbox


class Notifier:
    def __init__(self, outbox: Outbox, channels: Mapping[str, Channel]):
        if not channels:
            raise ValueError("notifier: at least one channel is needed (the log channel will do)")
        self.outbox = outbox
        self.channels = dict(channels)

    def notify(self, notification: Notification, now: datetime | None = None) -> list[int]:
        """Queue ``notification`` on every channel; returns outbox row ids (none if suppressed)."""
        return self.outbox.enqueue(notification, list(self.channels), now=now)

    def flush(self, now: datetime | None = None, time_budget_seconds: float = 20.0) -> FlushReport:
        return self.outbox.flush(self.channels, now=now, time_budget_seconds=time_budget_seconds)
