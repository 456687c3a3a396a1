"""Which broker holds a user, when users are spread over several (`AMQP_URLS`): the
contract's placement, the same function as the server's (`tests/test_placement.py` checks
it against the contract's test vectors).

A user's slot is CRC-16/XMODEM of the decimal user id, modulo 16,384; the slot table maps
slots to brokers, numbered from 0 in the order of `AMQP_URLS`.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Optional

SLOTS = 16_384
MAX_BROKERS = 64

#: The exchange whose `alternate-exchange` argument records which place a broker serves.
SHARD_RECORD_EXCHANGE = "longpoll.shard"


def slot_of(user_id: int) -> int:
    """The user's slot: CRC-16/XMODEM of the id in decimal ASCII, modulo 16,384."""
    crc = 0
    for byte in str(user_id).encode("ascii"):
        crc ^= byte << 8
        for _ in range(8):
            crc = ((crc << 1) ^ 0x1021) & 0xFFFF if crc & 0x8000 else (crc << 1) & 0xFFFF
    return crc % SLOTS


class InvalidTable(ValueError):
    """A slot table (`AMQP_SLOTS`) that leaves a slot without a broker, names one twice,
    or names a broker that is not listed."""


class SlotTable:
    """Which broker serves each slot."""

    def __init__(self, owners: Sequence[int], brokers: int) -> None:
        self._owners = list(owners)
        self.brokers = brokers

    @classmethod
    def even(cls, brokers: int) -> SlotTable:
        """The default: even, contiguous ranges in list order."""
        _check_count(brokers)
        return cls([slot * brokers // SLOTS for slot in range(SLOTS)], brokers)

    @classmethod
    def parse(cls, text: str, brokers: int) -> SlotTable:
        """A table as `AMQP_SLOTS` writes it: `first-last:broker` (or `slot:broker`)
        entries, comma-separated; every slot exactly once, every broker at least once."""
        _check_count(brokers)
        owners: list[Optional[int]] = [None] * SLOTS
        for entry in (entry.strip() for entry in text.split(",")):
            if not entry:
                continue
            first, last, broker = _entry(entry)
            if broker >= brokers:
                raise InvalidTable(f"broker {broker} is not listed: there are {brokers}")
            for slot in range(first, last + 1):
                if owners[slot] is not None:
                    raise InvalidTable(f"slot {slot} is given twice")
                owners[slot] = broker
        missing = next((slot for slot, owner in enumerate(owners) if owner is None), None)
        if missing is not None:
            raise InvalidTable(f"slot {missing} has no broker")
        table = cls([owner for owner in owners if owner is not None], brokers)
        idle = next((b for b in range(brokers) if not table.ranges_of(b)), None)
        if idle is not None:
            raise InvalidTable(f"broker {idle} holds no slot")
        return table

    @classmethod
    def from_setting(cls, text: Optional[str], brokers: int) -> SlotTable:
        """`AMQP_SLOTS` if set, else the even table."""
        return cls.parse(text, brokers) if text and text.strip() else cls.even(brokers)

    def broker_of(self, user_id: int) -> int:
        return self._owners[slot_of(user_id)]

    def ranges_of(self, broker: int) -> list[tuple[int, int]]:
        ranges: list[tuple[int, int]] = []
        for slot, owner in enumerate(self._owners):
            if owner != broker:
                continue
            if ranges and ranges[-1][1] + 1 == slot:
                ranges[-1] = (ranges[-1][0], slot)
            else:
                ranges.append((slot, slot))
        return ranges

    def to_setting(self) -> str:
        """The table as `AMQP_SLOTS` writes it, ranges in slot order."""
        entries = sorted(
            (first, last, broker)
            for broker in range(self.brokers)
            for first, last in self.ranges_of(broker)
        )
        return ",".join(
            f"{first}:{broker}" if first == last else f"{first}-{last}:{broker}"
            for first, last, broker in entries
        )

    def fingerprint(self) -> str:
        """The server's fingerprint of the whole table: the first 6 bytes of SHA-256 of
        `to_setting()`, in hex."""
        return hashlib.sha256(self.to_setting().encode("ascii")).hexdigest()[:12]

    def record_of(self, broker: int) -> str:
        """What broker `broker` records about itself under this table."""
        return (
            f"{SHARD_RECORD_EXCHANGE}.broker-{broker}-of-{self.brokers}-table-{self.fingerprint()}"
        )


def _check_count(brokers: int) -> None:
    if not 1 <= brokers <= MAX_BROKERS:
        raise InvalidTable(f"{brokers} brokers: between 1 and {MAX_BROKERS}")


def _entry(entry: str) -> tuple[int, int, int]:
    try:
        span, broker = entry.split(":")
        first, _, last = span.partition("-")
        bounds = int(first), int(last or first), int(broker)
    except ValueError:
        raise InvalidTable(f"{entry!r}: expected first-last:broker") from None
    if not 0 <= bounds[0] <= bounds[1] < SLOTS:
        raise InvalidTable(f"{entry!r}: slots run from 0 to {SLOTS - 1}")
    return bounds
