"""Decoding off the event loop: images that decode to many pixels (resize bombs: a few hundred
bytes of WebP or RLE BMP) are decoded on the decoder's threads within a pixel budget, so the
event loop keeps running other work meanwhile; model-size images stay inline."""

from __future__ import annotations

import asyncio
import io
import os
import sys
import threading

import pytest
from PIL import Image

from server.http.errors import DecompressionBomb
from server.images.decoder import Decoder, PixelBudget
from tests.server.helpers import solid


def bomb(side: int = 1024, fmt: str = "WEBP") -> bytes:
    """A tiny file of a big solid image (lossless WebP, or RLE-compressed BMP)."""
    buffer = io.BytesIO()
    image = Image.new("RGB" if fmt == "WEBP" else "L", (side, side), 7)
    options = {"lossless": True} if fmt == "WEBP" else {"compression": 1}
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


def test_bombs_are_decoded_off_the_event_loop_within_the_pixel_budget():
    data = bomb()
    assert len(data) < 1000

    async def scenario():
        decoder = Decoder(max_pixels=1 << 24, budget_pixels=1024 * 1024, threads=2)
        peak = 0

        async def one():
            nonlocal peak
            task = asyncio.ensure_future(decoder.decode(data, height=8, width=8, resize=True))
            while not task.done():
                peak = max(peak, decoder.budget.used)
                await asyncio.sleep(0.001)
            return task.result()

        decodes = [asyncio.create_task(one()) for _ in range(4)]
        await asyncio.sleep(0)  # every decode task has taken its first step
        running_meanwhile = not all(t.done() for t in decodes)
        images = await asyncio.gather(*decodes)
        decoder.shutdown()
        return running_meanwhile, images, peak, decoder.budget.used

    running_meanwhile, images, peak, left = asyncio.run(scenario())
    assert running_meanwhile, "the decoding blocked the event loop"
    assert all(i.array.shape == (3, 8, 8) and i.resized for i in images)
    assert peak <= 1024 * 1024 and left == 0


def test_model_size_images_are_decoded_inline_and_bombs_over_the_limit_refused_at_once():
    async def scenario():
        decoder = Decoder(max_pixels=1000, budget_pixels=1000)
        task = asyncio.ensure_future(decoder.decode(solid(200), height=8, width=8, resize=False))
        await asyncio.sleep(0)
        inline = task.done()  # finished within its first step: no thread hop
        with pytest.raises(DecompressionBomb):
            await decoder.decode(bomb(64, "BMP"), height=8, width=8, resize=True)
        decoder.shutdown()
        return inline, task.result()

    inline, image = asyncio.run(scenario())
    assert inline and image.array.shape == (3, 8, 8)


def test_the_pixel_budget_serves_first_come_first_served_and_survives_cancellation():
    async def scenario():
        budget = PixelBudget(100)
        order = []
        await budget.acquire(80)

        async def want(name, pixels):
            taken = await budget.acquire(pixels)
            order.append(name)
            return taken

        big = asyncio.create_task(want("big", 500))  # capped at the capacity: waits for all
        small = asyncio.create_task(want("small", 10))  # fits, but waits its turn
        gone = asyncio.create_task(want("gone", 10))
        await asyncio.sleep(0)
        gone.cancel()
        budget.release(80)
        taken = await big
        budget.release(taken)
        budget.release(await small)
        await asyncio.gather(gone, return_exceptions=True)
        return order, budget.used

    order, used = asyncio.run(scenario())
    assert order == ["big", "small"] and used == 0


@pytest.mark.skipif(sys.platform != "linux", reason="per-thread nice is Linux's")
def test_decoder_threads_are_niced_so_the_fast_path_gets_the_cpu_first():
    def nice() -> int:
        return os.getpriority(os.PRIO_PROCESS, threading.get_native_id())

    decoder = Decoder(max_pixels=1 << 24, budget_pixels=1 << 24, threads=1, niceness=7)
    try:
        assert decoder._executor.submit(nice).result() == min(19, nice() + 7)
    finally:
        decoder.shutdown()
