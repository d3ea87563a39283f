"""Keccak-256, the hash an EVM chain names a transaction by (the original Keccak padding,
not SHA3-256's, so :mod:`hashlib` cannot give it).

Written from the Keccak reference (FIPS 202's permutation, Keccak-f[1600]): 25 lanes of 64
bits, 24 rounds of theta, rho, pi, chi and iota; a sponge with a 1088-bit rate. The round
constants and rotation offsets are derived below as the specification defines them rather
than copied as tables. It is slow (about 30 µs per block of 136 bytes) and used only when a
broadcast is answered "already known": a transaction hash is wanted once in a while.
"""

from __future__ import annotations

_MASK = (1 << 64) - 1
_RATE = 136
"""Bytes absorbed per permutation: 1600 bits less twice the 256-bit output."""


def _round_constants() -> tuple[int, ...]:
    """Iota's constants: bits of an LFSR (x^8 + x^6 + x^5 + x^4 + 1) at positions 2^j - 1."""
    state = 1
    bits = []
    for _ in range(24 * 7):
        bits.append(state & 1)
        state <<= 1
        if state & 0x100:
            state ^= 0x171
    constants = []
    for round_index in range(24):
        value = 0
        for j in range(7):
            if bits[7 * round_index + j]:
                value |= 1 << ((1 << j) - 1)
        constants.append(value)
    return tuple(constants)


def _rotations() -> tuple[int, ...]:
    """Rho's offsets per lane (x + 5y): (t+1)(t+2)/2 along the walk (x, y) -> (y, 2x+3y)."""
    offsets = [0] * 25
    x, y = 1, 0
    for t in range(24):
        offsets[x + 5 * y] = ((t + 1) * (t + 2) // 2) % 64
        x, y = y, (2 * x + 3 * y) % 5
    return tuple(offsets)


_ROUNDS = _round_constants()
_ROT = _rotations()
_PI = tuple(y + 5 * ((2 * x + 3 * y) % 5) for y in range(5) for x in range(5))
"""Where pi moves lane x + 5y (listed in that order)."""


def _rol(value: int, shift: int) -> int:
    return ((value << shift) | (value >> (64 - shift))) & _MASK if shift else value


def _permute(lanes: list[int]) -> None:
    for constant in _ROUNDS:
        columns = [
            lanes[x] ^ lanes[x + 5] ^ lanes[x + 10] ^ lanes[x + 15] ^ lanes[x + 20]
            for x in range(5)
        ]
        for x in range(5):
            d = columns[(x - 1) % 5] ^ _rol(columns[(x + 1) % 5], 1)
            for y in range(0, 25, 5):
                lanes[x + y] ^= d
        moved = [0] * 25
        for i in range(25):
            moved[_PI[i]] = _rol(lanes[i], _ROT[i])
        for y in range(0, 25, 5):
            row = moved[y : y + 5]
            for x in range(5):
                lanes[x + y] = row[x] ^ (~row[(x + 1) % 5] & row[(x + 2) % 5])
        lanes[0] ^= constant


def keccak256(data: bytes) -> bytes:
    """The Keccak-256 digest of ``data`` (32 bytes)."""
    padded = bytearray(data)
    padded.append(0x01)
    padded.extend(b"\x00" * (-len(padded) % _RATE))
    padded[-1] |= 0x80
    lanes = [0] * 25
    for start in range(0, len(padded), _RATE):
        block = padded[start : start + _RATE]
        for i in range(_RATE // 8):
            lanes[i] ^= int.from_bytes(block[8 * i : 8 * i + 8], "little")
        _permute(lanes)
    return b"".join(lane.to_bytes(8, "little") for lane in lanes[:4])
