"""The FIFO of recycled items waiting to be rolled out, with a maximum age.

Items are popped oldest first. An item built at step ``s`` is still served at step ``t`` while
``t - s <= max_age_steps``; older ones are dropped when met and counted, never silently. Nothing
else is dropped: whatever a step does not pop stays for the next (there are no epoch boundaries
that flush the queue). The queue is part of a checkpoint, so a resumed run pops the same items.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable

from megatron_spark.spark.recycler import Item


class ItemQueue:
    def __init__(self, max_age_steps: int):
        self.max_age_steps = max_age_steps
        self._items: deque[Item] = deque()
        self.expired = 0
        """Items dropped for age since the start of the run."""

    def __len__(self) -> int:
        return len(self._items)

    def push(self, items: Iterable[Item]) -> None:
        self._items.extend(items)

    def requeue(self, items: list[Item]) -> None:
        """Put popped items back at the front, in their order."""
        self._items.extendleft(reversed(items))

    def pop(self, n: int, step: int) -> list[Item]:
        """Up to ``n`` items, oldest first, skipping (and counting) those too old for ``step``."""
        out: list[Item] = []
        while self._items and len(out) < n:
            item = self._items.popleft()
            if step - item.step > self.max_age_steps:
                self.expired += 1
                continue
            out.append(item)
        return out

    def state_dict(self) -> dict:
        return {"items": [x.to_dict() for x in self._items], "expired": self.expired}

    def load_state_dict(self, state: dict) -> None:
        self._items = deque(Item.from_dict(d) for d in state["items"])
        self.expired = int(state["expired"])
