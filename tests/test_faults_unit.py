"""The fault suite's table (tests/faultlog.py) on a small suite of its own, run by pytest under xdist as make faults runs it."""

import json

from conftest import REPO

SUITE = """
import pytest


@pytest.mark.fault
def test_survives(fault_case):
    fault_case("Disk full | mid-way", expected="fails clearly; nothing lost")
    assert 1 + 1 == 2
    fault_case.observed("failed clearly;\\n  nothing lost")


@pytest.mark.fault
@pytest.mark.parametrize("n", [1, 2])
def test_loses_data(fault_case, n):
    fault_case(f"Killed mid-write {n}", expected="the re-run is whole")
    assert n == 1, "the second file is short"
    fault_case.observed("whole")


@pytest.mark.fault
def test_without_a_case():
    pass


def test_not_a_fault_case():
    pass
"""


def test_the_table_gathers_every_case_across_workers_with_what_it_observed(pytester):
    pytester.makeconftest(f"import sys\nsys.path.insert(0, {str(REPO / 'tests')!r})\npytest_plugins = ['faultlog']\n")
    pytester.makepyfile(test_suite=SUITE)
    table = pytester.path / "out" / "faults.md"

    run = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-n", "2", "-m", "fault", "--fault-table", str(table))

    run.assert_outcomes(passed=2, failed=1, errors=1)
    rows = {row["test"].split("::")[1]: row for row in json.loads(table.with_suffix(".json").read_text())}
    assert sorted(rows) == ["test_loses_data[1]", "test_loses_data[2]", "test_survives", "test_without_a_case"]
    assert rows["test_survives"]["observed"] == "failed clearly; nothing lost" and rows["test_survives"]["passed"] is True
    assert rows["test_loses_data[2]"]["passed"] is False and rows["test_loses_data[2]"]["observed"] is None
    assert rows["test_loses_data[1]"]["case"] == "Killed mid-write 1" and rows["test_loses_data[1]"]["passed"] is True
    assert rows["test_without_a_case"]["passed"] is False  # marked fault without fault_case: an error, in the table
    text = table.read_text()
    assert text.startswith("Fault suite, run of ") and "2 of 4 fault cases passed" in text
    lines = [line for line in text.splitlines() if line.startswith("| ")]
    assert lines[0] == "| case | expected | observed | passed | test | s |"
    assert "| Disk full / mid-way | fails clearly; nothing lost | failed clearly; nothing lost | yes |" in text
    assert "| Killed mid-write 2 | the re-run is whole | (not reached) | NO (failed in call) |" in text
    run.stdout.fnmatch_lines(["*fault suite*", "| case | expected | observed | passed | test | s |", "*fault table written to*"])
