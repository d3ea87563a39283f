"""Keccak-256 against known digests: the empty string and "abc" (the Keccak team's), a
transaction hash ganache gave for its raw bytes, and lengths at and around the sponge's
136-byte rate (checked against eth-hash, an independent implementation)."""

from __future__ import annotations

import pytest

from rpcbalancer.keccak import keccak256

GANACHE_RAW = (
    "01f868820539808504a817c80082520894ffcf8fdee72ac11b5c542428b35eef5769c409f00180c001a0ffd7d2"
    "8c6d77683296fcfbf05ef24e262f5862b32190375408b398286e5ff79da04f31d8a2cbfcde488c8059f653a0f1"
    "a527d1f5a2e3bc26d112cc35b25b20b6a8"
)


@pytest.mark.parametrize(
    ("data", "digest"),
    [
        (b"", "c5d2460186f7233c927e7db2dcc703c0e500b653ca82273b7bfad8045d85a470"),
        (b"abc", "4e03657aea45a94fc7d47ba826c8d667c0d1e6e33a64a036ec44f58fa12d6c45"),
        (
            bytes.fromhex(GANACHE_RAW),
            "21a92f86e55759418db79dda96ddfdda5c4a2728adb240aff59e22c787428ffc",
        ),
        (b"y" * 135, "381d81af29434d050b0d038b59157d96015ad07ad6f4267838db2d3c245d383a"),
        (b"x" * 136, "50da8ef3747b7a7f01d08563aa11c72a2a668563fb928adc6e8d2a1ab4e36096"),
        (b"a" * 200, "96ea54061def936c4be90b518992fdc6f12f535068a256229aca54267b4d084d"),
    ],
)
def test_known_digests(data: bytes, digest: str) -> None:
    assert keccak256(data).hex() == digest


def test_it_is_not_sha3() -> None:
    import hashlib

    assert keccak256(b"abc") != hashlib.sha3_256(b"abc").digest()
