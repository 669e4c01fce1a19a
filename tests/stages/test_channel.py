"""The bounded channel between the run's stages: order, bound, end, cancellation."""

from __future__ import annotations

import asyncio

import pytest

from bulkgetty.stages.channel import Channel


async def _settle() -> None:
    """Let every ready task run until it waits (loop turns, not time)."""
    for _ in range(5):
        await asyncio.sleep(0)


async def _drain(channel: Channel[int], into: list[int]) -> None:
    async for item in channel:
        into.append(item)


async def test_every_item_reaches_one_receiver_in_order_and_every_receiver_ends() -> None:
    """Several receivers share the items, each exactly once; all end after the last sender."""
    channel = Channel[int](4)
    got: list[list[int]] = [[], [], []]
    receivers = [asyncio.create_task(_drain(channel, g)) for g in got]
    a, b = channel.sender(), channel.sender()
    async with a:
        for i in range(0, 50, 2):
            await a.send(i)
    for i in range(1, 50, 2):
        await b.send(i)
    await asyncio.sleep(0)
    assert not any(r.done() for r in receivers)  # one sender is still open
    await b.aclose()
    await asyncio.wait_for(asyncio.gather(*receivers), 5)
    assert sorted(x for g in got for x in g) == list(range(50))
    for g in got:  # one receiver sees one sender's items in the order they were sent
        assert [x for x in g if x % 2 == 0] == sorted(x for x in g if x % 2 == 0)


async def test_a_sender_waits_while_the_channel_holds_its_size() -> None:
    """The bound is what keeps purchases only a window ahead of the transfers."""
    channel = Channel[int](2)
    out = channel.sender()
    await out.send(1)
    await out.send(2)
    third = asyncio.create_task(out.send(3))
    await _settle()
    assert not third.done()
    assert await anext(channel) == 1
    await asyncio.wait_for(third, 5)
    await out.aclose()
    got: list[int] = []
    await asyncio.wait_for(_drain(channel, got), 5)
    assert got == [2, 3]


async def test_a_receiver_cancelled_while_waiting_loses_no_item() -> None:
    channel = Channel[int](2)
    out = channel.sender()
    waiting = asyncio.create_task(anext(channel))
    await _settle()
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    await out.send(7)
    await out.aclose()
    got: list[int] = []
    await asyncio.wait_for(_drain(channel, got), 5)
    assert got == [7]


async def test_a_channel_with_no_sender_left_refuses_a_new_one() -> None:
    channel = Channel[int](1)
    await channel.sender().aclose()
    with pytest.raises(RuntimeError):
        channel.sender()
