"""Waiting for descriptors with poll(2): select() refuses descriptor numbers over 1023, which a
busy daemon reaches ("filedescriptor out of range in select()")."""

from __future__ import annotations

import select
from collections.abc import Iterable

_GONE = select.POLLHUP | select.POLLERR | select.POLLNVAL


def ready(
    readable: Iterable[int], writable: Iterable[int] = (), timeout: float | None = None
) -> tuple[set[int], set[int]]:
    """Returns (readable, writable): the given descriptors that are ready within `timeout`
    seconds (None: no limit). As with select(), a descriptor whose other end is gone, or that
    is in error, counts as ready: the read or write that follows says what happened."""
    masks: dict[int, int] = {}
    for fd in readable:
        masks[fd] = masks.get(fd, 0) | select.POLLIN
    for fd in writable:
        masks[fd] = masks.get(fd, 0) | select.POLLOUT
    poller = select.poll()
    for fd, mask in masks.items():
        poller.register(fd, mask)
    events = poller.poll(None if timeout is None else max(0, int(timeout * 1000)))
    can_read = {
        fd for fd, ev in events if masks[fd] & select.POLLIN and ev & (select.POLLIN | _GONE)
    }
    can_write = {
        fd for fd, ev in events if masks[fd] & select.POLLOUT and ev & (select.POLLOUT | _GONE)
    }
    return can_read, can_write
