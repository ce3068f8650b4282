"""Readers for the original recordings: jAER AEDAT 3.1 (DVS128 Gesture) and AEDAT 2.0 (CIFAR10-DVS).

Both return ``{"t", "x", "y", "p"}`` numpy arrays in file order (t int64 microseconds, x column,
y row, p polarity 0/1).  Parsing is vectorised with ``np.frombuffer``; only AEDAT 3.1 packets are
walked in Python (one step per packet of thousands of events).  Any structural problem raises
:class:`DatasetFormatError` naming the file and the byte offset.

Formats (checked against libcaer's ``events/common.h`` and ``polarity.h`` and SpikingJelly's
readers, which produced the frames the paper trained on):

* AEDAT 3.1: ASCII header lines starting with ``#``, ending with ``#!END-HEADER\\r\\n``; then packets,
  each a 28-byte little-endian header ``int16 eventType, int16 eventSource, int32 eventSize,
  int32 eventTSOffset, int32 eventTSOverflow, int32 eventCapacity, int32 eventNumber, int32
  eventValid`` followed by ``eventCapacity * eventSize`` bytes of events.  Polarity events (type 1)
  are ``uint32 data, int32 timestamp``: valid = bit 0, polarity = bit 1, y = bits 2-16,
  x = bits 17-31; the full timestamp is ``timestamp | eventTSOverflow << 31``.
* AEDAT 2.0 as in CIFAR10-DVS: ``#`` header lines, then big-endian ``uint32 address, uint32
  timestamp`` pairs.  The address holds polarity in bit 0, a column in bits 1-7 and a row in bits
  8-14 of a sensor that is mounted rotated: the frame coordinates are ``x = 127 - row``,
  ``y = 127 - column`` and the polarity is inverted, as SpikingJelly decodes it.
"""
from __future__ import annotations

import os
import struct
from typing import Dict, Tuple, Union

import numpy as np

from .base import DatasetFormatError, DatasetNotFoundError

__all__ = ["read_aedat3", "read_cifar10dvs_aedat", "read_aedat2_raw", "POLARITY_EVENT",
           "AEDAT3_PACKET_HEADER"]

PathLike = Union[str, "os.PathLike[str]"]

POLARITY_EVENT = 1
AEDAT3_PACKET_HEADER = struct.Struct("<hhiiiiii")  # 28 bytes
_END_HEADER = b"#!END-HEADER"


def _read_bytes(path: PathLike) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except FileNotFoundError:
        raise DatasetNotFoundError(f"event file {os.fspath(path)} does not exist") from None
    except IsADirectoryError:
        raise DatasetFormatError(f"{os.fspath(path)} is a folder, expected an .aedat event file") from None


def _skip_header(data: bytes, path: PathLike, *, stop_at_end_marker: bool) -> Tuple[int, bytes]:
    """Byte offset just after the ``#`` header lines, and the first header line."""
    pos, first = 0, b""
    while data.startswith(b"#", pos):
        nl = data.find(b"\n", pos)
        if nl < 0:
            raise DatasetFormatError(f"{os.fspath(path)}: truncated file: the text header starting at byte "
                                     f"{pos} has no end of line (the file was cut short; download it again)")
        line = data[pos:nl + 1]
        first = first or line
        pos = nl + 1
        if stop_at_end_marker and line.startswith(_END_HEADER):
            break
    return pos, first.strip()


def read_aedat3(path: PathLike, *, only_valid: bool = False) -> Dict[str, np.ndarray]:
    """Polarity events of a jAER AEDAT 3.1 file (DVS128 Gesture's ``user*_*.aedat``).

    Packets of other event types (special, frame, IMU) are skipped.  ``only_valid=True`` drops
    events whose valid bit is 0; the default keeps all events, as the paper's pipeline did.
    """
    data = _read_bytes(path)
    name = os.fspath(path)
    pos, first = _skip_header(data, path, stop_at_end_marker=True)
    if not first.startswith(b"#!AER-DAT3"):
        found = first[:40].decode("latin-1") if first else data[:16].hex(" ")
        raise DatasetFormatError(f"{name}: not an AEDAT 3.x file: expected a first line '#!AER-DAT3.1', "
                                 f"found {found!r}")
    words, stamps = [], []
    size = len(data)
    while pos < size:
        if size - pos < AEDAT3_PACKET_HEADER.size:
            raise DatasetFormatError(f"{name}: truncated file: {size - pos} bytes at byte {pos} are too few "
                                     f"for a 28-byte packet header (the file was cut short; download it again)")
        e_type, _source, e_size, _ts_offset, ts_overflow, capacity, _number, _valid = \
            AEDAT3_PACKET_HEADER.unpack_from(data, pos)
        if e_size <= 0 or capacity < 0 or ts_overflow < 0:
            raise DatasetFormatError(f"{name}: corrupt packet header at byte {pos}: eventSize {e_size}, "
                                     f"eventCapacity {capacity}, eventTSOverflow {ts_overflow}")
        body = capacity * e_size
        start = pos + AEDAT3_PACKET_HEADER.size
        if start + body > size:
            raise DatasetFormatError(f"{name}: truncated file: the packet at byte {pos} declares {capacity} "
                                     f"events of {e_size} bytes but only {size - start} bytes remain "
                                     f"(the file was cut short; download it again)")
        if e_type == POLARITY_EVENT and capacity:
            if e_size < 8 or e_size % 4:
                raise DatasetFormatError(f"{name}: corrupt polarity packet at byte {pos}: eventSize {e_size} "
                                         f"(expected 8)")
            events = np.frombuffer(data, dtype="<u4", count=body // 4, offset=start).reshape(capacity, e_size // 4)
            words.append(events[:, 0])
            stamps.append(events[:, 1].astype(np.int64) | (np.int64(ts_overflow) << 31))
        pos = start + body
    word = np.concatenate(words) if words else np.zeros(0, np.uint32)
    t = np.concatenate(stamps) if stamps else np.zeros(0, np.int64)
    if only_valid:
        keep = (word & 1).astype(bool)
        word, t = word[keep], t[keep]
    return {"t": t,
            "x": ((word >> 17) & 0x7FFF).astype(np.uint16),
            "y": ((word >> 2) & 0x7FFF).astype(np.uint16),
            "p": ((word >> 1) & 1).astype(np.uint8)}


def read_aedat2_raw(path: PathLike) -> Tuple[np.ndarray, np.ndarray]:
    """``(address, timestamp)`` uint32 arrays of a jAER AEDAT 2.0 file (big-endian pairs)."""
    data = _read_bytes(path)
    name = os.fspath(path)
    if not data:
        raise DatasetFormatError(f"{name}: empty file (0 bytes), expected an AEDAT 2.0 recording starting with "
                                 "'#!AER-DAT2.0' (the download or extraction was cut short; get the file again)")
    pos, first = _skip_header(data, path, stop_at_end_marker=False)
    if not first.startswith(b"#!AER-DAT2"):
        found = first[:40].decode("latin-1") if first else data[:16].hex(" ")
        raise DatasetFormatError(f"{name}: not an AEDAT 2.0 file: expected a first line '#!AER-DAT2.0', "
                                 f"found {found!r}")
    body = len(data) - pos
    if body % 8:
        raise DatasetFormatError(f"{name}: truncated or corrupt file: {body} bytes of events after the "
                                 f"header is not a multiple of 8 (address + timestamp per event; "
                                 f"download the file again)")
    pairs = np.frombuffer(data, dtype=">u4", offset=pos).reshape(-1, 2)
    return pairs[:, 0].astype(np.uint32), pairs[:, 1].astype(np.uint32)


def read_cifar10dvs_aedat(path: PathLike) -> Dict[str, np.ndarray]:
    """Events of one CIFAR10-DVS recording (``<class>/cifar10_<class>_<i>.aedat``), 128 x 128."""
    address, stamp = read_aedat2_raw(path)
    column = (address & 0xFE) >> 1
    row = (address & 0x7F00) >> 8
    return {"t": stamp.astype(np.int64),
            "x": (127 - row).astype(np.uint16),
            "y": (127 - column).astype(np.uint16),
            "p": (1 - (address & 1)).astype(np.uint8)}
