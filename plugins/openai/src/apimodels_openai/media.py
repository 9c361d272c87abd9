"""Small but real media files made from scratch for the simulator: PNG images, WAV / PCM /
FLAC tones and MP3 silence. Standard library only; every file opens in ordinary tools."""

from __future__ import annotations

import io
import math
import struct
import wave
import zlib


def png(width: int, height: int, seed: int) -> bytes:
    """An RGB gradient PNG whose colours depend on ``seed``."""
    r0, g0, b0 = seed & 0xFF, (seed >> 8) & 0xFF, (seed >> 16) & 0xFF
    rows = bytearray()
    for y in range(height):
        rows.append(0)  # filter: none
        for x in range(width):
            rows += bytes(((r0 + x * 4) & 0xFF, (g0 + y * 4) & 0xFF, (b0 + x + y) & 0xFF))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(bytes(rows), 6))
        + chunk(b"IEND", b"")
    )


def tone(seconds: float, rate: int = 24000, hz: float = 440.0) -> list[int]:
    """16-bit samples of a sine tone, faded in and out."""
    n = max(1, int(seconds * rate))
    fade = max(1, min(n // 10, rate // 50))
    return [
        int(8000 * math.sin(2 * math.pi * hz * i / rate) * min(1.0, i / fade, (n - i) / fade))
        for i in range(n)
    ]


def pcm(samples: list[int]) -> bytes:
    """Raw 16-bit little-endian mono samples (OpenAI's ``pcm``: 24 kHz)."""
    return struct.pack(f"<{len(samples)}h", *samples)


def wav(samples: list[int], rate: int = 24000) -> bytes:
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(pcm(samples))
    return buf.getvalue()


def _crc8(data: bytes) -> int:
    crc = 0
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = ((crc << 1) ^ 0x07) & 0xFF if crc & 0x80 else (crc << 1) & 0xFF
    return crc


def _crc16(data: bytes) -> int:
    crc = 0
    for byte in data:
        crc ^= byte << 8
        for _ in range(8):
            crc = ((crc << 1) ^ 0x8005) & 0xFFFF if crc & 0x8000 else (crc << 1) & 0xFFFF
    return crc


def flac(samples: list[int], rate: int = 24000) -> bytes:
    """A FLAC stream of verbatim (uncompressed) subframes: valid, if not small."""
    block = 4096
    total = len(samples)
    info = bytearray(struct.pack(">HH", block, block))
    info += (0).to_bytes(3, "big") + (0).to_bytes(3, "big")  # min/max frame size unknown
    # 20 bits rate, 3 bits channels-1, 5 bits bps-1, 36 bits total samples
    packed = (rate << 44) | (0 << 41) | (15 << 36) | total
    info += packed.to_bytes(8, "big") + bytes(16)  # MD5 unknown (zeros are allowed)
    out = bytearray(b"fLaC")
    out += bytes((0x80,)) + len(info).to_bytes(3, "big") + info  # last metadata block
    for number, start in enumerate(range(0, total, block)):
        chunk = samples[start : start + block]
        header = bytearray((0xFF, 0xF8))
        # block size from the 16-bit field at the end; sample rate from the header (0)
        header.append((0b0111 << 4) | 0b0000)
        header.append((0b0000 << 4) | (0b100 << 1))  # mono, 16 bits per sample
        header += _utf8_number(number)
        header += (len(chunk) - 1).to_bytes(2, "big")
        header.append(_crc8(bytes(header)))
        body = bytes((0b00000010,)) + struct.pack(f">{len(chunk)}h", *chunk)  # VERBATIM
        frame = bytes(header) + body
        out += frame + _crc16(frame).to_bytes(2, "big")
    # Sample rate is not in the frame headers (code 0): readers take STREAMINFO's.
    return bytes(out)


def _utf8_number(n: int) -> bytes:
    if n < 0x80:
        return bytes((n,))
    if n < 0x800:
        return bytes((0xC0 | (n >> 6), 0x80 | (n & 0x3F)))
    return bytes((0xE0 | (n >> 12), 0x80 | ((n >> 6) & 0x3F), 0x80 | (n & 0x3F)))


def mp3_silence(seconds: float) -> bytes:
    """MPEG-1 Layer III, 128 kbit/s, 44.1 kHz mono frames of silence.

    A frame header followed by all-zero side information and main data: every decoder
    reads it as valid frames that decode to silence (a tone would need a real encoder).
    """
    header = bytes((0xFF, 0xFB, 0x90, 0xC4))  # sync, MPEG-1 L3, no CRC, 128k, 44.1k, mono
    frame = header + bytes(417 - len(header))  # 144 * 128000 / 44100 = 417 bytes
    frames = max(1, round(seconds * 44100 / 1152))
    return frame * frames
