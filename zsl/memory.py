"""Transient host memory of a block of code: its peak resident set above the resident set it started from.

Linux only (reads /proc/self/status and resets the peak through /proc/self/clear_refs); elsewhere the
figure is None.  The peak is the whole process's, so only code that runs alone in its process is measured
exactly (a run's evaluation in a trial's process or actor is).
"""

from __future__ import annotations

from pathlib import Path

GIB = 2**30
_STATUS, _CLEAR = Path("/proc/self/status"), Path("/proc/self/clear_refs")


def _kib(field: str) -> int | None:
    try:
        for line in _STATUS.read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


class TransientPeak:
    """``with TransientPeak() as peak: ...``; then ``peak.gib``: the peak resident set during the
    block minus the resident set at its start, in GiB (None where it cannot be measured)."""

    def __enter__(self) -> TransientPeak:
        self.gib: float | None = None
        self._base = _kib("VmRSS")
        try:
            _CLEAR.write_text("5")  # VmHWM := VmRSS
        except OSError:
            self._base = None
        return self

    def __exit__(self, *exc) -> None:
        peak = _kib("VmHWM")
        if self._base is not None and peak is not None:
            self.gib = max(peak - self._base, 0) * 1024 / GIB
