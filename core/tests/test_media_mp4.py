"""media.mp4_duration: the length of an MP4 read from its movie header (``moov/mvhd``), as
the gateway reads a video output's length to bill it per second."""

from __future__ import annotations

import struct

import pytest

from apimodels.providers import media


def box(kind: bytes, payload: bytes, *, large: bool = False) -> bytes:
    if large:  # size 1: a 64-bit size follows the type
        return struct.pack(">I4sQ", 1, kind, 16 + len(payload)) + payload
    return struct.pack(">I4s", 8 + len(payload), kind) + payload


def mvhd(timescale: int, duration: int, version: int = 0) -> bytes:
    if version == 1:
        times = struct.pack(">QQIQ", 0, 0, timescale, duration)
    else:
        times = struct.pack(">IIII", 0, 0, timescale, duration)
    return box(b"mvhd", bytes((version, 0, 0, 0)) + times + bytes(80))


FTYP = box(b"ftyp", b"isom" + struct.pack(">I", 512) + b"isomavc1")


@pytest.mark.parametrize(
    ("movie", "seconds"),
    [
        (box(b"moov", mvhd(1000, 8000)), 8.0),
        (box(b"moov", mvhd(90000, 450000, version=1)), 5.0),
        (box(b"moov", box(b"udta", b"x" * 5) + mvhd(600, 900)), 1.5),  # mvhd not first
        (box(b"moov", mvhd(1000, 2500), large=True), 2.5),
    ],
)
def test_reads_the_movie_header(movie: bytes, seconds: float) -> None:
    mdat = box(b"mdat", b"\0" * 100)
    assert media.mp4_duration(FTYP + movie + mdat) == seconds
    assert media.mp4_duration(FTYP + mdat + movie) == seconds  # moov after the data


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"not an mp4 at all",
        FTYP + box(b"mdat", b"\0" * 10),  # no moov
        FTYP + box(b"moov", box(b"trak", b"")),  # no mvhd
        FTYP + box(b"moov", mvhd(0, 100)),  # no timescale
        FTYP + box(b"moov", mvhd(1000, 8000))[:-40],  # cut short
        struct.pack(">I4s", 4, b"moov"),  # a size smaller than its header
    ],
)
def test_anything_else_has_no_duration(data: bytes) -> None:
    assert media.mp4_duration(data) is None
