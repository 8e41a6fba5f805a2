"""Internal. CRC-32C (Castagnoli) of many messages at once with numpy, for the checksums of event-file records.

TensorBoard's own fallback computes it a byte at a time in Python (about 3 MB/s here); the event files of a long run
with hundreds of layers are tens to hundreds of MB. Here every message is cut into blocks of :data:`BLOCK` bytes and
the registers of all blocks advance together, a byte column at a time; then each message's blocks are folded left
to right (the register of ``A`` followed by ``C`` is ``shift(register(A)) ^ register(C)``, ``shift`` being the
linear map of feeding ``BLOCK`` zero bytes), all messages together. Two facts make blocks independent: with a zero
initial register, leading zero bytes leave the register at zero (so a message is padded at the front to whole
blocks), and the standard initial value ``0xFFFFFFFF`` is the same as a zero register with the first four bytes of
the message inverted (so the padding goes in front of those).

Example:
    >>> [hex(c) for c in crc32c_many([b"123456789", b""])]  # the standard check value, and the empty message
    ['0xe3069283', '0x0']
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

__all__ = ["BLOCK", "crc32c", "crc32c_many"]

BLOCK = 64
_POLY = 0x82F63B78  # CRC-32C, reflected
_TABLES: dict[str, Any] = {}


def _table() -> list[int]:
    table = []
    for byte in range(256):
        crc = byte
        for _ in range(8):
            crc = (crc >> 1) ^ (_POLY if crc & 1 else 0)
        table.append(crc)
    return table


def crc32c(data: bytes) -> int:
    """CRC-32C of one message, a byte at a time (for short messages)."""
    table = _TABLES.setdefault("plain", _table())
    crc = 0xFFFFFFFF
    for byte in data:
        crc = table[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


def _numpy_tables() -> tuple[Any, list[Any]]:
    """The byte table, and the four tables of ``shift`` (one per byte of the register)."""
    if "numpy" not in _TABLES:
        import numpy as np

        table = np.array(_table(), dtype=np.uint32)
        start = np.arange(256, dtype=np.uint32)
        shifts = []
        for k in range(4):
            crc = start << np.uint32(8 * k)
            for _ in range(BLOCK):  # feed BLOCK zero bytes
                crc = table[crc & np.uint32(0xFF)] ^ (crc >> np.uint32(8))
            shifts.append(crc)
        _TABLES["numpy"] = (table, shifts)
    return _TABLES["numpy"]


def crc32c_many(messages: Sequence[bytes]) -> list[int]:
    """CRC-32C of each message (numpy when it is installed, else a byte at a time)."""
    try:
        import numpy as np
    except ImportError:  # pragma: no cover - numpy comes with tensorboard
        return [crc32c(m) for m in messages]
    long = [i for i, m in enumerate(messages) if len(m) >= 4]
    out = [crc32c(m) if len(m) < 4 else 0 for m in messages]
    if not long:
        return out
    lengths = np.array([len(messages[i]) for i in long], dtype=np.int64)
    blocks = -(-lengths // BLOCK)
    crc = _block_crcs(np, [messages[i] for i in long], lengths, blocks)
    for i, value in zip(long, _fold_blocks(np, crc, blocks).tolist()):
        out[i] = value
    return out


def _block_crcs(np: Any, messages: list[bytes], lengths: Any, blocks: Any) -> Any:
    """The CRC register after each ``BLOCK``-byte block of every message, messages left-padded to whole blocks.

    A message's first four bytes are inverted (CRC-32C's initial register of all ones), so each block's CRC can
    start from zero; the blocks of all messages are computed at once, a byte column at a time.
    """
    table, _ = _numpy_tables()
    pads = blocks * BLOCK - lengths
    pieces = []
    for message, pad in zip(messages, pads.tolist()):
        pieces += [bytes(pad), message]
    data = np.frombuffer(b"".join(pieces), dtype=np.uint8).copy()
    first_byte = np.concatenate(([0], np.cumsum(blocks * BLOCK)[:-1])) + pads
    for k in range(4):
        data[first_byte + k] ^= 0xFF
    columns = np.ascontiguousarray(data.reshape(-1, BLOCK).T)  # row j: byte j of every block
    crc = np.zeros(columns.shape[1], dtype=np.uint32)
    low, eight = np.uint32(0xFF), np.uint32(8)
    for j in range(BLOCK):
        crc = table[(crc ^ columns[j]) & low] ^ (crc >> eight)
    return crc


def _fold_blocks(np: Any, crc: Any, blocks: Any) -> Any:
    """Each message's CRC-32C from its blocks' CRCs, longest messages first (the active ones are a prefix)."""
    _, (s0, s1, s2, s3) = _numpy_tables()
    low, eight = np.uint32(0xFF), np.uint32(8)
    order = np.argsort(-blocks, kind="stable")
    sorted_blocks = blocks[order]
    first_block = np.concatenate(([0], np.cumsum(blocks)[:-1]))[order]
    most = int(sorted_blocks[0])
    register = np.zeros(len(order), dtype=np.uint32)
    active = 0
    for j in range(most):
        while active < len(order) and sorted_blocks[active] >= most - j:
            active += 1
        r = register[:active]
        shifted = s0[r & low] ^ s1[(r >> eight) & low] ^ s2[(r >> np.uint32(16)) & low] ^ s3[r >> np.uint32(24)]
        index = first_block[:active] + (j - (most - sorted_blocks[:active]))
        register[:active] = shifted ^ crc[index]
    result = np.empty(len(order), dtype=np.uint32)
    result[order] = register ^ np.uint32(0xFFFFFFFF)
    return result
