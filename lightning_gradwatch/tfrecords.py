"""TFRecord files (TensorBoard's event files) read record by record, every checksum verified.

TensorBoard's own reader stops quietly at a corrupt record; this one says which record of which file is damaged, so
a damaged file is reported instead of read as a shorter run. A file that ends in half a record is what a process
killed while writing leaves: its whole records are kept, with a note, when the caller allows it.

Example:
    >>> import tempfile
    >>> from pathlib import Path
    >>> from torch.utils.tensorboard import SummaryWriter
    >>> with tempfile.TemporaryDirectory() as d:
    ...     with SummaryWriter(d) as writer:
    ...         writer.add_scalar("x", 1.0, 0)
    ...     (path,) = Path(d).iterdir()
    ...     records, note = read_records(path, partial_ok=False)
    ...     _ = path.write_bytes(path.read_bytes()[:-3])  # a process killed while writing
    ...     shorter, cut = read_records(path, partial_ok=True)
    >>> len(records), note, len(shorter), cut.endswith("(1 whole records kept)")
    (2, None, 1, True)
"""

from __future__ import annotations

import struct
from pathlib import Path
from typing import Any

from lightning_gradwatch import _crc32c

__all__ = ["RecordFileError", "read_records"]


class RecordFileError(Exception):
    """An event file that cannot be read, or whose records are damaged; the message is one line naming the file."""


_HEADER = struct.Struct("<Q")
_CRC = struct.Struct("<I")
_BATCH_BYTES = 8 << 20


def _crc32c_function() -> Any:
    """google-crc32c's C function when it is installed, else ``None`` (checksums computed with numpy)."""
    try:
        import google_crc32c  # type: ignore[import-not-found]

        return google_crc32c.value
    except ImportError:
        return None


def _masked(crc: int) -> int:
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def read_records(path: Path, partial_ok: bool) -> tuple[list[bytes], str | None]:
    """The records of a TFRecord event file, each checked against its CRC32C.

    Returns the records, and a note when the file ends in half a record and ``partial_ok`` (a run that did not
    finish: its process died while writing).

    Raises:
        RecordFileError: on a checksum mismatch, or a truncated record when not ``partial_ok``.
    """
    try:
        data = path.read_bytes()
    except OSError as err:
        raise RecordFileError(f"{path}: cannot read ({' '.join(str(err).split()) or type(err).__name__})") from err
    crc32c = _crc32c_function()
    if crc32c is None:
        records = _checked_at_once(data)
        if records is not None:
            return records, None
        crc32c = _crc32c.crc32c  # find what is wrong, record by record
    offset, n = 0, 0
    records: list[bytes] = []
    while offset < len(data):
        if offset + 12 > len(data):
            truncated = f"{path}: truncated event file (record {n} header is incomplete)"
            break
        header = data[offset : offset + 8]
        (length,) = _HEADER.unpack(header)
        (length_crc,) = _CRC.unpack(data[offset + 8 : offset + 12])
        if _masked(crc32c(header)) != length_crc:
            raise RecordFileError(f"{path}: corrupt event file (record {n} length checksum mismatch)")
        end = offset + 12 + length
        if end + 4 > len(data):
            truncated = f"{path}: truncated event file (record {n} is incomplete)"
            break
        payload = data[offset + 12 : end]
        (payload_crc,) = _CRC.unpack(data[end : end + 4])
        if _masked(crc32c(payload)) != payload_crc:
            raise RecordFileError(f"{path}: corrupt event file (record {n} data checksum mismatch)")
        records.append(payload)
        offset, n = end + 4, n + 1
    else:
        return records, None
    if not partial_ok:
        raise RecordFileError(truncated)
    return records, f"{path.name} ends in half a record ({len(records)} whole records kept)"


def _checked_at_once(data: bytes) -> list[bytes] | None:
    """The records of a whole, undamaged event file, every checksum computed at once; ``None`` if anything is off."""
    offset, headers, records, expected = 0, [], [], []
    while offset < len(data):
        if offset + 12 > len(data):
            return None
        header = data[offset : offset + 8]
        end = offset + 12 + _HEADER.unpack(header)[0]
        if end + 4 > len(data):
            return None
        headers.append(header)
        records.append(data[offset + 12 : end])
        expected += [_CRC.unpack_from(data, offset + 8)[0], _CRC.unpack_from(data, end)[0]]
        offset = end + 4
    messages = [m for pair in zip(headers, records) for m in pair]
    start = 0
    while start < len(messages):  # batches of about 8 MB keep the memory flat
        end, size = start, 0
        while end < len(messages) and size < _BATCH_BYTES:
            size, end = size + len(messages[end]), end + 1
        found = _crc32c.crc32c_many(messages[start:end])
        if any(_masked(crc) != want for crc, want in zip(found, expected[start:end])):
            return None
        start = end
    return records
