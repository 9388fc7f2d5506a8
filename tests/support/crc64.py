"""CRC-64/ECMA-182 of whole data, as OSS computes it: for the loopback server and for checks.

The product only combines part CRCs (`db_backup.storage.crc64.crc64_combine`); computing a CRC
over data is oss2's job there, and the test server's here. The table-driven core is crcmod's
(a dependency of oss2, with a C extension).
"""

from __future__ import annotations

import crcmod

_POLY = 0x142F0E1EBA9EA3693
_XOROUT = 0xFFFFFFFFFFFFFFFF

_crc64_fun = crcmod.mkCrcFun(_POLY, initCrc=0, rev=True, xorOut=_XOROUT)

CHECK_VALUE = 0x995DC9BBDF1939FA  # the CRC of b"123456789"


def crc64(data: bytes, crc: int = 0) -> int:
    """Returns the CRC-64/ECMA-182 of `data`, continuing from a previous result `crc`."""
    return int(_crc64_fun(data, crc))


class Crc64:
    """Accumulates a CRC-64/ECMA-182 over data fed in pieces; `.value` is the CRC so far."""

    def __init__(self) -> None:
        self.value = 0
        self.length = 0

    def update(self, data: bytes) -> None:
        """Folds the next piece of data into the running CRC."""
        self.value = crc64(data, self.value)
        self.length += len(data)
