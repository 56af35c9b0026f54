"""The reload hand-off: one slot, one lock, and every offer ends exactly one way.

A reloaded model is loaded on its own thread and offered here; the inference thread takes it between two frames.
The reload thread waits a bounded time for that. Three parties can end an offer (the inference thread takes it,
the reload thread gives up, `stop()` withdraws it) and they race, so the offer's state changes only under the
lock: whoever moves it out of PENDING owns the model. The taker serves it and gives back the one it replaced (the
reload thread deactivates that, off the inference thread); whoever withdrew an offer deactivates it.
An offer is never both taken and withdrawn, a second offer never overwrites a first, and nothing offered after
`close()` is accepted: no runner is ever leaked.
"""

from __future__ import annotations

import enum
import threading
from typing import Generic, TypeVar

T = TypeVar("T")


class OfferState(enum.Enum):
    PENDING = "pending"
    TAKEN = "taken"  # the inference thread serves it
    WITHDRAWN = "withdrawn"  # not taken in time: the waiting reload thread deactivates it
    STOPPED = "stopped"  # withdrawn by close(): its caller (stop) deactivates it
    REFUSED = "refused"  # the slot was busy or closed: never offered


class Offer(Generic[T]):
    def __init__(self, item: T) -> None:
        self.item = item
        self.state = OfferState.PENDING
        self.replaced: T | None = None  # once TAKEN: the item it replaced, now the waiter's to retire


class Handoff(Generic[T]):
    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._offer: Offer[T] | None = None
        self._closed = False

    def offer(self, item: T) -> Offer[T]:
        """Put `item` in the slot; REFUSED (the caller keeps it) if another offer is pending or the slot is closed."""
        offer = Offer(item)
        with self._cond:
            if self._closed or self._offer is not None:
                offer.state = OfferState.REFUSED
            else:
                self._offer = offer
        return offer

    def take(self, current: T) -> T | None:
        """The inference thread, between two frames: the pending item, now its own, or None. `current`, the item
        it replaces, goes to the offer's waiter."""
        with self._cond:
            offer = self._offer
            if offer is None:
                return None
            offer.state, offer.replaced, self._offer = OfferState.TAKEN, current, None
            self._cond.notify_all()
            return offer.item

    def wait(self, offer: Offer[T], timeout: float) -> OfferState:
        """Wait up to `timeout` s for the offer to be taken; if it was not, it is withdrawn now (under the lock, so
        a take can no longer happen) and the caller deactivates it. Returns the final state."""
        with self._cond:
            self._cond.wait_for(lambda: offer.state is not OfferState.PENDING, timeout)
            if offer.state is OfferState.PENDING:
                offer.state, self._offer = OfferState.WITHDRAWN, None
            return offer.state

    def close(self) -> T | None:
        """At shutdown: refuse later offers and withdraw the pending one, returned for the caller to deactivate."""
        with self._cond:
            self._closed = True
            offer, self._offer = self._offer, None
            if offer is None:
                return None
            offer.state = OfferState.STOPPED
            self._cond.notify_all()
            return offer.item
