"""Scalar logs TensorBoard reads, written without TensorFlow.

An event file is a sequence of TFRecords (length, masked CRC-32C of the length,
payload, masked CRC-32C of the payload), each payload a serialized `Event`
protocol buffer: wall_time (field 1, double), step (2, int64), file_version (3,
string) or summary (5: repeated Value{tag (1, string), simple_value (2, float)}).
Those few fields are encoded here by hand.
"""

from __future__ import annotations

import os
import socket
import struct
import time


def _crc32c_table() -> tuple[int, ...]:
  table = []
  for i in range(256):
    crc = i
    for _ in range(8):
      crc = (crc >> 1) ^ 0x82F63B78 if crc & 1 else crc >> 1
    table.append(crc)
  return tuple(table)


_TABLE = _crc32c_table()


def crc32c(data: bytes) -> int:
  """CRC-32C (Castagnoli), as TFRecord framing uses."""
  crc = 0xFFFFFFFF
  for byte in data:
    crc = _TABLE[(crc ^ byte) & 0xFF] ^ (crc >> 8)
  return crc ^ 0xFFFFFFFF


def _masked_crc(data: bytes) -> int:
  crc = crc32c(data)
  return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def _varint(n: int) -> bytes:
  out = bytearray()
  n &= (1 << 64) - 1  # int64 as protobuf writes it (two's complement)
  while True:
    byte, n = n & 0x7F, n >> 7
    out.append(byte | (0x80 if n else 0))
    if not n:
      return bytes(out)


def _length_delimited(field: int, payload: bytes) -> bytes:
  return _varint(field << 3 | 2) + _varint(len(payload)) + payload


def event_bytes(step: int, *, wall_time: float, file_version: str | None = None,
                scalars: dict[str, float] | None = None) -> bytes:
  """One serialized Event."""
  out = _varint(1 << 3 | 1) + struct.pack("<d", wall_time) + _varint(2 << 3 | 0) + _varint(step)
  if file_version is not None:
    out += _length_delimited(3, file_version.encode())
  if scalars:
    values = b"".join(
        _length_delimited(1, _length_delimited(1, tag.encode())
                          + _varint(2 << 3 | 5) + struct.pack("<f", float(value)))
        for tag, value in scalars.items())
    out += _length_delimited(5, values)
  return out


def record_bytes(payload: bytes) -> bytes:
  """`payload` framed as one TFRecord."""
  length = struct.pack("<Q", len(payload))
  return (length + struct.pack("<I", _masked_crc(length)) + payload
          + struct.pack("<I", _masked_crc(payload)))


class ScalarWriter:
  """Appends scalars to one event file in `logdir` (a new file per writer, as
  TensorBoard expects of each process that writes)."""

  def __init__(self, logdir: str):
    self.logdir = logdir
    self.path = os.path.join(logdir, f"events.out.tfevents.{int(time.time())}."
                                     f"{socket.gethostname()}.{os.getpid()}.vpntk")

  def _append(self, payload: bytes) -> None:
    # Opened per write: no handle outlives a step, and a killed run leaves
    # whole records behind it. A file moved or removed meanwhile (a staged run
    # renamed, --force) starts again with its version record.
    if not os.path.exists(self.path):
      os.makedirs(self.logdir, exist_ok=True)
      payload = record_bytes(event_bytes(0, wall_time=time.time(),
                                         file_version="brain.Event:2")) + record_bytes(payload)
    else:
      payload = record_bytes(payload)
    with open(self.path, "ab") as f:
      f.write(payload)

  def write(self, step: int, scalars: dict[str, float]) -> None:
    self._append(event_bytes(step, wall_time=time.time(), scalars=scalars))
