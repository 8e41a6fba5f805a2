"""Event-file checksums computed at once with numpy agree with TensorBoard's byte-at-a-time CRC-32C."""

from __future__ import annotations

import random

from hypothesis import given, settings
from hypothesis import strategies as st
from tensorboard.compat.tensorflow_stub.pywrap_tensorflow import crc32c as reference

from lightning_gradwatch._crc32c import BLOCK, crc32c, crc32c_many


@settings(max_examples=60, deadline=None)
@given(st.lists(st.binary(max_size=3 * BLOCK + 5), max_size=12))
def test_many_messages_of_any_length(messages):
    assert crc32c_many(messages) == [reference(m) for m in messages]


def test_block_boundaries_and_a_long_message():
    rng = random.Random(0)
    lengths = [0, 1, 3, 4, 5, BLOCK - 1, BLOCK, BLOCK + 1, 2 * BLOCK, 100_003]
    messages = [rng.randbytes(n) for n in lengths]
    assert crc32c_many(messages) == [reference(m) for m in messages]
    assert [crc32c(m) for m in messages[:6]] == [reference(m) for m in messages[:6]]
