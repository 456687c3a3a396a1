"""The package speaks the contract it says it does: its version is the contract's
(openapi.yaml), and its placement is the contract's, vector for vector."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

import longpoll
from longpoll.placement import InvalidTable, SlotTable, slot_of

REPOSITORY = Path(__file__).resolve().parents[3]


def test_the_version_is_the_contracts() -> None:
    openapi = (REPOSITORY / "openapi.yaml").read_text()
    contract_version = re.search(r"^  version: (\S+)$", openapi, re.MULTILINE)
    assert contract_version is not None
    assert longpoll.CONTRACT_VERSION == contract_version.group(1)
    project = (REPOSITORY / "clients/python/pyproject.toml").read_text()
    version = re.search(r'^version = "(.+)"$', project, re.MULTILINE)
    assert version is not None and longpoll.__version__ == version.group(1)


def contract_vectors() -> list[tuple[int, int, int, int, int]]:
    """The placement test vectors, read from docs/contract.md."""
    text = (REPOSITORY / "docs/contract.md").read_text()
    section = text[text.index("## Placement over several brokers") :]
    rows = re.findall(r"^\| (\d+) \| (\d+) \| (\d) \| (\d) \| (\d) \|$", section, re.MULTILINE)
    assert len(rows) >= 7, "the contract's vectors"
    return [tuple(int(cell) for cell in row) for row in rows]  # type: ignore[misc]


@pytest.mark.parametrize("vector", contract_vectors())
def test_placement_matches_the_contracts_vectors(vector: tuple[int, int, int, int, int]) -> None:
    user, slot, *brokers = vector
    assert slot_of(user) == slot
    for count, broker in zip((2, 3, 4), brokers):
        assert SlotTable.even(count).broker_of(user) == broker


def test_a_slot_table_round_trips_and_refuses_gaps() -> None:
    table = SlotTable.parse("0-5461:0,5462-10922:1,10923-16383:2", 3)
    assert table.to_setting() == SlotTable.even(3).to_setting()
    assert SlotTable.from_setting("", 3).to_setting() == table.to_setting()
    for bad in ["0-100:0", "0-16383:0,5:1", "0-16383:3", "0-16383:0", "a-b:0", "0-16384:0"]:
        with pytest.raises(InvalidTable):
            SlotTable.parse(bad, 2 if bad != "0-16383:3" else 3)
