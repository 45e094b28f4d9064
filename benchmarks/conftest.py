"""Shared pieces of the benchmark suites (pytest-benchmark).

* ``bench_*.py`` files are collected when a folder is given (``pytest benchmarks/``); the
  repository's ``pytest.ini`` keeps the default run on ``tests/``.
* ``bench_report``: a session-wide table. Each suite adds rows (group, name, seconds, bytes);
  at the end of the session it is printed with every row's speed-up over its group's baseline
  row measured in the same run, and the achieved bandwidth where bytes were given.
* ``bench_sync`` / ``bench_device_name`` fixtures: the synchronisation every timed call must end
  with on CUDA, and the name the report prints for the device.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import pytest
import torch


def pytest_collect_file(file_path, parent):
    if (file_path.suffix == ".py" and file_path.name.startswith("bench_")
            and not parent.session.isinitpath(file_path)):
        return pytest.Module.from_parent(parent, path=file_path)
    return None


def sync(device: torch.device | str | None = None) -> None:
    """Wait for queued CUDA work so a timed call measures the kernels, not their launch."""
    if torch.cuda.is_available() and (device is None or torch.device(device).type == "cuda"):
        torch.cuda.synchronize()


def device_name(device: torch.device | str) -> str:
    """Human name of the device the numbers were measured on."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU ({torch.get_num_threads()} threads)"


@dataclass
class BenchReport:
    """Timings of one session, grouped; ratios are against each group's baseline row."""

    rows: list[tuple[str, str, float, float | None, str]] = field(default_factory=list)
    devices: set[str] = field(default_factory=set)

    def add(self, group: str, name: str, seconds: float, bytes_moved: float | None = None,
            baseline: str = "eager", device: str | None = None) -> None:
        self.rows.append((group, name, seconds, bytes_moved, baseline))
        if device:
            self.devices.add(device)

    def render(self) -> list[str]:
        lines = [f"measured on: {', '.join(sorted(self.devices)) or 'unknown device'}",
                 f"{'group':<44} {'impl':<10} {'mean ms':>10} {'vs base':>8} {'GB/s':>8}"]
        groups: dict[str, list] = {}
        for row in self.rows:
            groups.setdefault(row[0], []).append(row)
        for group, rows in groups.items():
            base = {name: sec for _, name, sec, _, _ in rows}
            for _, name, sec, nbytes, baseline in rows:
                ratio = f"{base[baseline] / sec:7.2f}x" if baseline in base else "      -"
                bw = f"{nbytes / sec / 1e9:8.3g}" if nbytes else "       -"
                lines.append(f"{group:<44} {name:<10} {sec * 1e3:10.3f} {ratio:>8} {bw:>8}")
        return lines


_REPORT = BenchReport()


@pytest.fixture(scope="session")
def bench_sync():
    """``sync(device)``: call at the end of every timed function."""
    return sync


@pytest.fixture(scope="session")
def bench_device_name():
    """``device_name(device)``: GPU model or CPU thread count, for reports."""
    return device_name


@pytest.fixture(scope="session")
def bench_report() -> BenchReport:
    """The session's table of timings (printed at the end of the run)."""
    return _REPORT


def pytest_terminal_summary(terminalreporter):
    if _REPORT.rows:
        terminalreporter.write_sep("-", "speed-ups against the baseline of each group (same run)")
        for line in _REPORT.render():
            terminalreporter.write_line(line)
