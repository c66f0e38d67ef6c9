"""Where images are decoded: small ones on the event loop, big ones on threads, within a budget.

Decoding costs in pixels, not bytes: a 706-byte lossless WebP or a few-KB RLE BMP decodes to
4096 x 4096. So `Decoder.decode` looks at the header first (microseconds) and decodes on the
event loop only what is cheap for sure: model-size images (`resize=false`: any other size is
refused from the header) and images of at most `INLINE_PIXELS`. Everything else is decoded and
resized on the decoder's own threads, and holds its pixel count from a budget
(`ACCSMOOTH_DECODE_PIXEL_BUDGET`) while it waits and decodes: a request of 32 resize bombs
then decodes them a budget's worth at a time off the loop, /livez and the fast path keep
answering meanwhile, and the memory of images being decoded stays bounded. The threads are
niced like audits (`ACCSMOOTH_SAMPLED_NICE`), so that /certify gets the CPU first.

    decoder = Decoder(max_pixels=16_777_216, budget_pixels=16_777_216)
    image = await decoder.decode(data, height=32, width=32, resize=True)
    decoder.shutdown()
"""

from __future__ import annotations

import asyncio
import os
from collections import deque
from concurrent.futures import ThreadPoolExecutor

from accsmooth.images import DecodedImage, header_size
from server.images.imaging import decode_image
from server.threads import lower_thread_priority

INLINE_BYTES = 64 << 10  # model-size images up to this size are decoded on the event loop
INLINE_PIXELS = 256 * 256  # and images to resize up to this many pixels (about a millisecond)


class PixelBudget:
    """A first-come first-served weighted semaphore over pixels (event loop only)."""

    def __init__(self, capacity: int):
        self.capacity = capacity
        self.used = 0
        self._waiters: deque[tuple[int, asyncio.Future]] = deque()

    async def acquire(self, pixels: int) -> int:
        """Wait until `pixels` (capped at the capacity) fit; returns what was taken."""
        pixels = min(pixels, self.capacity)
        if not self._waiters and self.used + pixels <= self.capacity:
            self.used += pixels
            return pixels
        granted = asyncio.get_running_loop().create_future()
        self._waiters.append((pixels, granted))
        try:
            await granted
        except asyncio.CancelledError:
            if granted.done() and not granted.cancelled():  # granted, then cancelled: give back
                self.release(pixels)
            raise
        return pixels

    def release(self, pixels: int) -> None:
        self.used -= pixels
        while self._waiters:
            pixels, granted = self._waiters[0]
            if granted.cancelled():
                self._waiters.popleft()
                continue
            if self.used + pixels > self.capacity:
                return
            self._waiters.popleft()
            self.used += pixels
            granted.set_result(None)


class Decoder:
    """Decodes request images for a model input size without stalling the event loop."""

    def __init__(
        self, max_pixels: int, budget_pixels: int, threads: int | None = None, niceness: int = 0
    ):
        self.max_pixels = max_pixels
        self.budget = PixelBudget(budget_pixels)
        threads = threads or min(4, os.cpu_count() or 1)
        self._executor = ThreadPoolExecutor(
            threads,
            thread_name_prefix="decode",
            initializer=lower_thread_priority,
            initargs=(niceness,),
        )

    async def decode(self, data: bytes, *, height: int, width: int, resize: bool) -> DecodedImage:
        """`data` as a float32 [3, height, width] image; domain errors as `decode_image`."""
        args = (data, height, width)
        kwargs = {"resize": resize, "max_pixels": self.max_pixels}
        if not resize and len(data) <= INLINE_BYTES:
            return decode_image(*args, **kwargs)
        size = header_size(data)  # None: unreadable, decode_image says why (cheaply)
        pixels = size[0] * size[1] if size else 0
        if pixels <= INLINE_PIXELS or pixels > self.max_pixels:
            return decode_image(*args, **kwargs)  # small, or refused from its header
        taken = await self.budget.acquire(pixels)
        loop = asyncio.get_running_loop()
        work = self._executor.submit(decode_image, *args, **kwargs)
        # the pixels are given back when the decoding really ends, even if the waiter has gone
        work.add_done_callback(lambda _: loop.call_soon_threadsafe(self.budget.release, taken))
        return await asyncio.wrap_future(work)

    def shutdown(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)
