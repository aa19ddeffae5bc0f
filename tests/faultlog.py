"""The fault suite's table: each fault case states what it tries and expects, and records what it saw.

A fault case is a test marked `fault` that asks for the `fault_case` fixture:

    @pytest.mark.fault
    def test_redis_killed_mid_drain(fault_case, ...):
        fault_case("Redis killed mid-drain", expected="drain fails naming Redis; drained never true")
        ...  # the fault, the assertions, nothing lost
        fault_case.observed("failed: Cannot reach Redis at ...; the hung job still running in Redis")

The rows travel with the test reports (user_properties), so they reach the main process under
pytest-xdist too. With `--fault-table FILE` (what `make faults` passes) the table (case, expected,
observed, passed) is printed at the end of the session and written to FILE as Markdown.
A `fault` test without `fault_case`, or the reverse, is an error: the table lists every case.
"""

import json
import time
from pathlib import Path

import pytest

KEY = "fault_case"


class FaultCase:
    """What one fault case tries, expects and observed; kept in the test's user_properties."""

    def __init__(self, node):
        self._node = node
        self._row = None

    def __call__(self, case, expected):
        self._row = {"case": case, "expected": expected, "observed": None}
        self._node.user_properties.append((KEY, self._row))
        return self

    def observed(self, text):
        if self._row is None:
            raise RuntimeError("fault_case(case, expected=...) first, then fault_case.observed(...)")
        self._row["observed"] = " ".join(str(text).split())


@pytest.fixture
def fault_case(request):
    if request.node.get_closest_marker("fault") is None:
        pytest.fail(f"{request.node.nodeid} asks for fault_case but is not marked @pytest.mark.fault")
    case = FaultCase(request.node)
    yield case
    if case._row is None:
        pytest.fail(f"{request.node.nodeid} is a fault case that never said fault_case(case, expected=...)")


def pytest_addoption(parser):
    parser.addoption("--fault-table", metavar="FILE", default=None, help="write the fault suite's table to FILE (Markdown)")


def pytest_runtest_setup(item):
    if item.get_closest_marker("fault") is not None and "fault_case" not in getattr(item, "fixturenames", ()):
        pytest.fail(f"{item.nodeid} is marked fault but does not ask for fault_case: the table would miss it")


class FaultTable:
    def __init__(self, path):
        self.path = path
        self.rows = {}  # nodeid -> row
        self.started = time.time()

    @pytest.hookimpl
    def pytest_runtest_logreport(self, report):
        rows = [value for key, value in report.user_properties if key == KEY]
        if not rows and report.nodeid not in self.rows and "fault" not in report.keywords:
            return
        row = self.rows.setdefault(report.nodeid, {"test": report.nodeid, "passed": True, "seconds": 0.0})
        if rows:
            row.update({k: v for k, v in rows[-1].items() if v is not None or k not in row})
        row["seconds"] += getattr(report, "duration", 0.0)
        if report.failed or (report.when == "call" and report.skipped):
            row["passed"] = False
            row["outcome"] = "skipped" if report.skipped else f"failed in {report.when}"

    def lines(self):
        head = ["| case | expected | observed | passed | test | s |", "|---|---|---|---|---|---|"]
        body = []
        for row in sorted(self.rows.values(), key=lambda r: (r.get("case") or "", r["test"])):
            observed = row.get("observed") or "(not reached)"
            passed = "yes" if row["passed"] else f"NO ({row.get('outcome', 'failed')})"
            cells = [row.get("case") or "?", row.get("expected") or "?", observed, passed, row["test"], f"{row['seconds']:.1f}"]
            body.append("| " + " | ".join(cell.replace("|", "/") for cell in cells) + " |")
        return head + body

    @pytest.hookimpl(trylast=True)
    def pytest_terminal_summary(self, terminalreporter):
        if not self.rows:
            return
        passed = sum(row["passed"] for row in self.rows.values())
        total = sum(row["seconds"] for row in self.rows.values())
        lines = self.lines()
        summary = f"{passed} of {len(self.rows)} fault cases passed, {total:.0f} s of test time"
        terminalreporter.section("fault suite")
        for line in lines:
            terminalreporter.write_line(line)
        terminalreporter.write_line(summary)
        path = Path(self.path)
        path.parent.mkdir(parents=True, exist_ok=True)
        stamp = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(self.started))
        path.write_text(f"Fault suite, run of {stamp}: {summary}.\n\n" + "\n".join(lines) + "\n")
        path.with_suffix(".json").write_text(json.dumps(sorted(self.rows.values(), key=lambda r: r["test"]), indent=1) + "\n")
        terminalreporter.write_line(f"fault table written to {path}")


def pytest_configure(config):
    path = config.getoption("--fault-table")
    # Only the main process (not an xdist worker) gathers and writes the table.
    if path and not hasattr(config, "workerinput"):
        config.pluginmanager.register(FaultTable(path), "faultlog-table")
