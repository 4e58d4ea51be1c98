"""A client's request stream, kept for a replay to another copy until the first response.

Owns `ReplayableRequests`, the part of "retry before the first byte" that streaming calls
need: the messages a copy was sent are kept (up to a byte limit) so that, when the copy
turns out to be gone before it answered, the data plane's retry sends them again to
another copy, and the client sees nothing of the first. Used by the gRPC door's
ModelStreamInfer and by the other-RPC handler.

May import: asyncio, the wire module (its errors); never a door, the data plane or grpc.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable

from meshserve.router.wire import WireError


class ReplayableRequests:
    """The client's request stream, replayable to another copy until a response is relayed.

    Messages are read from the client by one task at a time (`_next`), which an attempt
    cancelled half-way does not lose: the next attempt awaits the same read. An attempt
    is a generator from `stream()`; starting a new one retires the previous (`_epoch`).
    """

    def __init__(
        self,
        requests: AsyncIterator[bytes],
        *,
        first: bytes | None,
        rewrite: Callable[[bytes], bytes] | None,
        limit: int,
    ) -> None:
        self._source = requests
        self._rewrite = rewrite
        self._limit = limit
        self._log: list[bytes] = [] if first is None else [first]
        self._size = 0 if first is None else len(first)
        self._ended = False
        self._next: asyncio.Future[bytes | None] | None = None
        self._epoch = 0
        self.replayable = True
        self.error: WireError | None = None

    def commit(self) -> None:
        """A response went back to the client: no replay from now on, so stop keeping the
        messages for one (the sender no longer retries either)."""
        self.replayable = False

    def stream(self) -> AsyncIterator[bytes]:
        self._epoch += 1
        return self._attempt(self._epoch)

    async def _attempt(self, epoch: int) -> AsyncIterator[bytes]:
        sent = 0
        while epoch == self._epoch:
            if sent < len(self._log):
                sent += 1
                yield self._log[sent - 1]
                continue
            if self._ended:
                return
            if self._next is None:
                self._next = asyncio.ensure_future(self._read())
            pending = self._next
            item = await asyncio.shield(pending)  # cancelled here: the read goes on for the next attempt
            if epoch != self._epoch or self._next is not pending:
                continue  # retired meanwhile (the loop ends) or another reader took it
            self._next = None
            if item is None:
                self._ended = True
                return
            if self._rewrite is not None:
                try:
                    item = self._rewrite(item)
                except WireError as err:
                    self.error = err
                    raise  # grpc cancels the forwarded call; the handler reports `error`
            if self.replayable and self._size + len(item) <= self._limit:
                self._log.append(item)
                self._size += len(item)
                sent += 1
            else:
                self.replayable = False
            yield item

    async def _read(self) -> bytes | None:
        # a coroutine of our own: a read cancelled before it starts never touches grpc's
        return await anext(aiter(self._source), None)

    def close(self) -> None:
        self._epoch += 1
        if self._next is not None:
            self._next.cancel()
            self._next = None
