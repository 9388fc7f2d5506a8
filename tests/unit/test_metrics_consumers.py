"""Every report consumer has a failure counter at 0 from the first metrics write."""

from __future__ import annotations

from db_backup.observe import events
from db_backup.observe.alerts import Notifier
from db_backup.observe.hooks import HookConsumer
from db_backup.observe.jobtable.sender import SinkConsumer
from db_backup.observe.metrics import CONSUMER_NAMES, MetricsConsumer


def test_the_zero_counters_name_exactly_the_consumers_events_publishes_to() -> None:
    classes = (SinkConsumer, MetricsConsumer, Notifier, HookConsumer)
    assert len(events.CONSUMERS) == len(classes)
    assert sorted(c.name for c in classes) == sorted(CONSUMER_NAMES)
