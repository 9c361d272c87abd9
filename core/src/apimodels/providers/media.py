"""Small but real media files, made from scratch with the standard library, for the simulators.

Every file opens in ordinary tools (checked once against FFmpeg's decoders):

- ``png``: an RGB(A) gradient whose colours come from a seed;
- ``tone``: 16-bit mono PCM of a faded sine tone, packed by ``wav`` (RIFF) and ``flac``
  (verbatim subframes: valid FLAC, not compressed);
- ``mp3_silence``, ``opus_silence`` (Ogg Opus), ``aac_silence`` (ADTS AAC-LC): streams of
  silent frames of the right length. Encoding a tone in these needs a real encoder, so they
  carry silence; their frame headers, durations and containers are genuine.
  ``mp3_silence_at`` makes such MP3 frames at any MPEG-1/2 Layer III rate and bitrate;

``duration`` reads the length of an audio file from its headers (WAV, FLAC, MP3, Ogg Opus,
ADTS AAC), as a transcription service would.
"""

from __future__ import annotations

import hashlib
import math
import struct
import sys
import zlib
from array import array
from functools import cache

# --- images ----------------------------------------------------------------------------


def png(width: int, height: int, seed: int, *, alpha: bool = False) -> bytes:
    """A PNG gradient whose colours depend on ``seed``; with ``alpha``, it fades to
    transparent at the bottom."""
    r0, g0, b0 = seed & 0xFF, (seed >> 8) & 0xFF, (seed >> 16) & 0xFF
    rows = bytearray()
    for y in range(height):
        rows.append(0)  # filter type: none
        a = bytes((255 - y * 255 // max(1, height - 1),)) if alpha else b""
        for x in range(width):
            rows += bytes(((r0 + x * 4) & 0xFF, (g0 + y * 4) & 0xFF, (b0 + x + y) & 0xFF)) + a

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(kind + data)
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)

    colour_type = 6 if alpha else 2  # RGBA or RGB, 8 bits per channel
    header = struct.pack(">IIBBBBB", width, height, 8, colour_type, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(bytes(rows), 6))
        + chunk(b"IEND", b"")
    )


# --- PCM, WAV, FLAC --------------------------------------------------------------------


def tone(seconds: float, rate: int = 24000, hz: float = 440.0) -> bytes:
    """16-bit little-endian mono samples of a sine tone, faded in and out over 10 ms.

    The frequency is rounded so that one period is a whole number of samples: the signal
    is then one period repeated, which is fast to build at any length."""
    n = max(1, round(seconds * rate))
    period = max(2, round(rate / hz))
    one = array("h", (round(8000 * math.sin(2 * math.pi * k / period)) for k in range(period)))
    samples = one * (n // period + 1)
    del samples[n:]
    fade = max(1, min(n // 2, rate // 100))
    for i in range(fade):
        samples[i] = samples[i] * i // fade
        samples[n - 1 - i] = samples[n - 1 - i] * i // fade
    if sys.byteorder == "big":
        samples.byteswap()
    return samples.tobytes()


def wav(pcm: bytes, rate: int = 24000) -> bytes:
    """A RIFF/WAVE file around 16-bit mono PCM."""
    fmt = struct.pack("<HHIIHH", 1, 1, rate, rate * 2, 2, 16)  # PCM, mono, 16 bits
    data = pcm[: len(pcm) // 2 * 2]
    body = b"WAVE" + b"fmt " + struct.pack("<I", len(fmt)) + fmt
    body += b"data" + struct.pack("<I", len(data)) + data
    return b"RIFF" + struct.pack("<I", len(body)) + body


@cache
def _crc_table(poly: int, width: int) -> tuple[int, ...]:
    """Table for an MSB-first CRC (no reflection), as FLAC and Ogg use."""
    top, mask = 1 << (width - 1), (1 << width) - 1
    table = []
    for byte in range(256):
        crc = byte << (width - 8)
        for _ in range(8):
            crc = ((crc << 1) ^ poly) & mask if crc & top else (crc << 1) & mask
        table.append(crc)
    return tuple(table)


def _crc(data: bytes, poly: int, width: int, crc: int = 0) -> int:
    table, shift, mask = _crc_table(poly, width), width - 8, (1 << width) - 1
    for byte in data:
        crc = ((crc << 8) & mask) ^ table[(crc >> shift) ^ byte]
    return crc


class _Crc16:
    """FLAC's CRC-16 of a frame, fast for frames whose bodies repeat.

    The CRC is affine in its starting state: crc(s, B) = Z(s) ^ crc(0, B) with Z linear,
    so once 16 basis values of Z are known for a body, a frame whose header leaves the
    state at s costs 16 XORs instead of a walk over the body."""

    def __init__(self) -> None:
        self.body = b""
        self.fast: tuple[int, tuple[int, ...]] | None = None  # crc(0, body), basis of Z

    def frame(self, header: bytes, body: bytes) -> int:
        state = _crc(header, 0x8005, 16)
        if body != self.body:  # a new body: walk it, and keep it in case it repeats
            self.body, self.fast = body, None
            return _crc(body, 0x8005, 16, state)
        if self.fast is None:
            zeros = bytes(len(body))
            basis = tuple(_crc(zeros, 0x8005, 16, 1 << b) for b in range(16))
            self.fast = _crc(body, 0x8005, 16), basis
        crc, basis = self.fast
        for bit in range(16):
            if state >> bit & 1:
                crc ^= basis[bit]
        return crc


def flac(pcm: bytes, rate: int = 24000, block: int = 4080) -> bytes:
    """A FLAC stream of 16-bit mono PCM in verbatim (uncompressed) subframes.

    ``block`` (samples per frame) defaults to a multiple of the periods ``tone`` uses at
    24 kHz (4080 = 60 * 68 = 48 * 85 ...), so most frames are equal and their CRC is cheap."""
    count = len(pcm) // 2
    samples = array("h", pcm[: count * 2])
    if sys.byteorder == "little":
        samples.byteswap()  # FLAC stores samples big-endian
    big = samples.tobytes()
    info = struct.pack(">HH", block, block) + bytes(6)  # min/max frame size: unknown
    # 20 bits sample rate, 3 bits channels - 1, 5 bits bits-per-sample - 1, 36 bits samples
    info += ((rate << 44) | (0 << 41) | (15 << 36) | count).to_bytes(8, "big")
    info += hashlib.md5(pcm[: count * 2]).digest()  # of the samples, little-endian
    crc16 = _Crc16()
    out = bytearray(b"fLaC" + bytes((0x80,)) + len(info).to_bytes(3, "big") + info)
    for number, start in enumerate(range(0, count, block)):
        size = min(block, count - start)
        header = bytearray((0xFF, 0xF8))  # sync, fixed block size
        header.append(0b0111 << 4)  # block size: 16 bits at the end; rate: from STREAMINFO
        header.append(0b100 << 1)  # mono, 16 bits per sample
        header += chr(number).encode("utf-8", "surrogatepass")  # FLAC's UTF-8-like number
        header += (size - 1).to_bytes(2, "big")
        header.append(_crc(bytes(header), 0x07, 8))
        body = b"\x02" + big[start * 2 : (start + size) * 2]  # VERBATIM subframe
        out += header + body + crc16.frame(bytes(header), body).to_bytes(2, "big")
    return bytes(out)


# --- MP3, Ogg Opus, ADTS AAC: silent frames --------------------------------------------

_MP3_FRAME = bytes((0xFF, 0xF3, 0x64, 0xC4)) + bytes(140)
"""MPEG-2 Layer III, 48 kbit/s, 24 kHz, mono, no CRC: 72 * 48000 / 24000 = 144 bytes, 576
samples. Side information and main data all zero: part2_3_length 0, so it decodes to
silence."""


def mp3_silence(seconds: float) -> bytes:
    """An MP3 stream of silent frames, 24 ms each, as long as ``seconds``."""
    return _MP3_FRAME * max(1, math.ceil(seconds * 24000 / 576))


def _ogg_page(
    packets: list[bytes], granule: int, serial: int, sequence: int, flags: int = 0
) -> bytes:
    lacing = bytearray()
    for packet in packets:
        lacing += b"\xff" * (len(packet) // 255) + bytes((len(packet) % 255,))
    header = struct.pack("<4sBBqIIIB", b"OggS", 0, flags, granule, serial, sequence, 0, len(lacing))
    page = header + bytes(lacing) + b"".join(packets)
    crc = _crc(page, 0x04C11DB7, 32)
    return page[:22] + struct.pack("<I", crc) + page[26:]


def opus_silence(seconds: float, serial: int = 0x51AB) -> bytes:
    """An Ogg Opus file of silent 20 ms CELT frames (TOC 0xF8: full band, mono)."""
    pre_skip, frame = 312, 960  # samples at 48 kHz
    frames = max(1, math.ceil((seconds * 48000 + pre_skip) / frame))  # pre-skip is decoded too
    head = b"OpusHead" + struct.pack("<BBHIhB", 1, 1, pre_skip, 24000, 0, 0)
    vendor = b"apimodels simulator"
    tags = b"OpusTags" + struct.pack("<I", len(vendor)) + vendor + struct.pack("<I", 0)
    pages = [_ogg_page([head], 0, serial, 0, flags=0x02), _ogg_page([tags], 0, serial, 1)]
    per_page = 50
    for first in range(0, frames, per_page):
        count = min(per_page, frames - first)
        last = first + count == frames
        granule = (first + count) * frame
        if last:  # the final granule trims the padding of the last frame
            granule = pre_skip + round(seconds * 48000)
        page = _ogg_page(
            [b"\xf8\xff\xfe"] * count, granule, serial, len(pages), flags=0x04 if last else 0
        )
        pages.append(page)
    return b"".join(pages)


def _aac_frame() -> bytes:
    """One ADTS frame (AAC-LC, 24 kHz, mono) holding 1024 samples of silence."""
    # raw_data_block: SCE (id 0, tag 0), global_gain 100, ics_info (long window, max_sfb 0,
    # no prediction), no pulse/TNS/gain control, then END (id 7), padded to a byte.
    bits = "000" + "0000" + f"{100:08b}" + "0" + "00" + "0" + "000000" + "0" + "000" + "111"
    bits += "0" * (-len(bits) % 8)
    payload = int(bits, 2).to_bytes(len(bits) // 8, "big")
    length = 7 + len(payload)
    # syncword, MPEG-4, layer 0, no CRC | profile LC (1), rate index 6 (24 kHz), mono,
    # frame length (13 bits), buffer fullness 0x7FF (VBR), one raw data block per frame.
    header = (
        (0xFFF << 44)
        | (0 << 43)
        | (0 << 41)
        | (1 << 40)
        | (1 << 38)
        | (6 << 34)
        | (0 << 33)
        | (1 << 30)
        | (length << 13)
        | (0x7FF << 2)
    )
    return header.to_bytes(7, "big") + payload


_AAC_FRAME = _aac_frame()


def aac_silence(seconds: float) -> bytes:
    """An ADTS AAC-LC stream of silent frames, 1024 samples (42.7 ms) each."""
    return _AAC_FRAME * max(1, math.ceil(seconds * 24000 / 1024))


# --- durations -------------------------------------------------------------------------

_MP3_BITRATES = {  # kbit/s by bitrate index, Layer III
    1: (0, 32, 40, 48, 56, 64, 80, 96, 112, 128, 160, 192, 224, 256, 320),  # MPEG-1
    2: (0, 8, 16, 24, 32, 40, 48, 56, 64, 80, 96, 112, 128, 144, 160),  # MPEG-2 and 2.5
}
_MP3_RATES = {3: (44100, 48000, 32000), 2: (22050, 24000, 16000), 0: (11025, 12000, 8000)}
_AAC_RATES = (96000, 88200, 64000, 48000, 44100, 32000, 24000, 22050, 16000, 12000, 11025, 8000)


def duration(data: bytes) -> float | None:
    """The length in seconds of a WAV, FLAC, MP3, Ogg Opus or ADTS AAC file, read from its
    headers; None for anything else (or anything unreadable)."""
    try:
        if data[:4] == b"RIFF" and data[8:12] == b"WAVE":
            return _wav_duration(data)
        if data[:4] == b"fLaC":
            rate = int.from_bytes(data[18:21], "big") >> 4
            total = int.from_bytes(data[21:26], "big") & (1 << 36) - 1
            return total / rate if rate and total else None
        if data[:4] == b"OggS" and b"OpusHead" in data[:64]:
            pre_skip = struct.unpack_from("<H", data, data.index(b"OpusHead") + 10)[0]
            last = data.rindex(b"OggS")
            return max(0, struct.unpack_from("<q", data, last + 6)[0] - pre_skip) / 48000
        if len(data) > 7 and data[0] == 0xFF and data[1] & 0xF6 == 0xF0:
            return _adts_duration(data)
        return _mp3_duration(data)
    except (ValueError, IndexError, struct.error, ZeroDivisionError):
        return None


def _wav_duration(data: bytes) -> float | None:
    pos, byte_rate = 12, 0
    while pos + 8 <= len(data):
        kind, size = data[pos : pos + 4], struct.unpack_from("<I", data, pos + 4)[0]
        if kind == b"fmt ":
            byte_rate = struct.unpack_from("<I", data, pos + 16)[0]
        elif kind == b"data":
            size = min(size, len(data) - pos - 8)  # streamed WAVs leave the size at 2**32 - 1
            return size / byte_rate if byte_rate else None
        pos += 8 + size + (size & 1)
    return None


def _adts_duration(data: bytes) -> float | None:
    pos, frames, rate = 0, 0, 0
    while pos + 7 <= len(data) and data[pos] == 0xFF and data[pos + 1] & 0xF6 == 0xF0:
        rate = _AAC_RATES[(data[pos + 2] >> 2) & 0x0F]
        length = (int.from_bytes(data[pos + 3 : pos + 6], "big") >> 5) & 0x1FFF
        blocks = (data[pos + 6] & 0x03) + 1
        if length < 7:
            break
        pos, frames = pos + length, frames + blocks
    return frames * 1024 / rate if rate else None


def _mp3_duration(data: bytes) -> float | None:
    pos = 0
    if data[:3] == b"ID3":  # skip an ID3v2 tag: its size is four 7-bit bytes
        size = data[6] << 21 | data[7] << 14 | data[8] << 7 | data[9]
        pos = 10 + size
    # A Layer III frame header: 11 sync bits, a version, layer bits 01.
    if not (data[pos] == 0xFF and data[pos + 1] & 0xE6 == 0xE2):
        return None
    version = (data[pos + 1] >> 3) & 0x03  # 3: MPEG-1, 2: MPEG-2, 0: MPEG-2.5
    kbps = _MP3_BITRATES[1 if version == 3 else 2][data[pos + 2] >> 4]
    return (len(data) - pos) * 8 / (kbps * 1000) if kbps else None


# --- MP4 -------------------------------------------------------------------------------


def _mp4_boxes(data: bytes, start: int, end: int) -> dict[bytes, tuple[int, int]]:
    """The boxes between ``start`` and ``end``: type -> (payload start, payload end)."""
    boxes, pos = {}, start
    while pos + 8 <= end:
        size, kind = struct.unpack_from(">I4s", data, pos)
        header = 8
        if size == 1:  # a 64-bit size follows the type
            size, header = struct.unpack_from(">Q", data, pos + 8)[0], 16
        elif size == 0:  # the box runs to the end of its parent
            size = end - pos
        if size < header or pos + size > end:
            break
        boxes.setdefault(kind, (pos + header, pos + size))
        pos += size
    return boxes


def mp4_duration(data: bytes) -> float | None:
    """The length in seconds of an MP4 (ISO BMFF) file, from its movie header (``moov/mvhd``);
    None when the file has none (or is unreadable). Billing video per second uses it."""
    try:
        moov = _mp4_boxes(data, 0, len(data)).get(b"moov")
        if moov is None:
            return None
        mvhd = _mp4_boxes(data, *moov).get(b"mvhd")
        if mvhd is None:
            return None
        pos = mvhd[0]
        if data[pos] == 1:  # version 1: 64-bit creation and modification times and duration
            timescale, length = struct.unpack_from(">IQ", data, pos + 20)
        else:
            timescale, length = struct.unpack_from(">II", data, pos + 12)
        return length / timescale if timescale else None
    except (IndexError, struct.error):
        return None


# --- MP3 at any of the MPEG-1/2 Layer III rates and bitrates ----------------------------

_MP3_VERSIONS = {  # sample rate -> (version bits, rate index, samples per frame)
    44100: (3, 0, 1152),
    48000: (3, 1, 1152),
    32000: (3, 2, 1152),
    22050: (2, 0, 576),
    24000: (2, 1, 576),
    16000: (2, 2, 576),
}


def mp3_silence_at(seconds: float, rate: int, kbps: int) -> bytes:
    """Silent mono Layer III frames at ``rate`` Hz and ``kbps`` (MPEG-1 for 32 to 48 kHz,
    MPEG-2 below), padded like an encoder's so the bitrate is exact on average."""
    version, rate_index, samples = _MP3_VERSIONS[rate]
    table = _MP3_BITRATES[1 if version == 3 else 2]
    bitrate_index = table.index(kbps)
    header_1 = 0xE0 | version << 3 | 0b010 | 1  # sync, version, Layer III, no CRC
    base, fraction = divmod(samples // 8 * kbps * 1000, rate)  # frame length in bytes
    frames, out, carried = max(1, math.ceil(seconds * rate / samples)), bytearray(), 0
    for _ in range(frames):
        carried += fraction
        padding = int(carried >= rate)  # one byte more whenever a whole byte has built up
        carried -= padding * rate
        third = bitrate_index << 4 | rate_index << 2 | padding << 1
        out += bytes((0xFF, header_1, third, 0xC4)) + bytes(base + padding - 4)
    return bytes(out)
