"""The supervised programs of the workloads, written as files into each run's folder.

Commands are plain argv lists (an interpreter and a script path), so no supervisor has to quote or
expand anything: the same program runs under all three.
"""

from __future__ import annotations

import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

# "NAME PID TIME_NS" into the FIFO as the first action, then idle forever.
STAMP_SH = """\
printf '%s %s %s\\n' "$1" "$$" "$(date +%s%N)" > "$2"
exec /bin/sleep infinity
"""

STAMP_PY = """\
import time
t = time.time_ns()
import os, sys
fd = os.open(sys.argv[2], os.O_WRONLY)
os.write(fd, f"{sys.argv[1]} {os.getpid()} {t}\\n".encode())
os.close(fd)
while True:
    time.sleep(3600)
"""

# "NAME PID" into the FIFO once running, then idle forever (start-up and idle scenarios).
READY_SH = """\
echo "$1 $$" > "$2"
exec /bin/sleep infinity
"""

# One line per start (its time), then exit 1 at once (crash-loop scenario).
CRASH_SH = """\
date +%s%N >> "$1"
exit 1
"""

# Waits for "go" on a FIFO, writes TOTAL bytes of 100-byte lines to stdout as fast as it can (blocks of
# 655 lines), then an end marker line, then its timings as JSON into RESULT.
WRITER_PY = """\
import json, os, sys, time
total, go, result, marker = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
block = (b"x" * 99 + b"\\n") * 655
with open(go, "rb") as f:
    f.read(1)
start, cpu0 = time.time_ns(), time.process_time()
written = 0
while written < total:
    view = memoryview(block)
    while view:
        n = os.write(1, view)
        view = view[n:]
        written += n
end = time.time_ns()
os.write(1, (marker + "\\n").encode())
with open(result + ".tmp", "w") as f:
    json.dump({"start_ns": start, "end_ns": end, "bytes": written, "cpu_sec": time.process_time() - cpu0}, f)
os.rename(result + ".tmp", result)
"""


def child_python() -> str:
    """Return the interpreter for Python children: Debian's own when present (a plain interpreter,
    as a service would use), else the harness's."""
    return shutil.which("python3", path="/usr/bin") or sys.executable


@dataclass(frozen=True)
class Programs:
    """Paths of the child programs written for one run."""

    folder: Path
    python: str

    @classmethod
    def write(cls, folder: Path) -> Programs:
        folder.mkdir(parents=True, exist_ok=True)
        for name, text in (
            ("stamp.sh", STAMP_SH),
            ("stamp.py", STAMP_PY),
            ("ready.sh", READY_SH),
            ("crash.sh", CRASH_SH),
            ("writer.py", WRITER_PY),
        ):
            (folder / name).write_text(text)
        return cls(folder, child_python())

    def stamp(self, kind: str, name: str, fifo: Path) -> tuple[str, ...]:
        """argv of the restart-latency child: ``kind`` is "sh" or "python"."""
        if kind == "sh":
            return ("/bin/sh", str(self.folder / "stamp.sh"), name, str(fifo))
        return (self.python, str(self.folder / "stamp.py"), name, str(fifo))

    def ready(self, name: str, fifo: Path) -> tuple[str, ...]:
        return ("/bin/sh", str(self.folder / "ready.sh"), name, str(fifo))

    def crash(self, counter: Path) -> tuple[str, ...]:
        return ("/bin/sh", str(self.folder / "crash.sh"), str(counter))

    def writer(self, nbytes: int, go: Path, result: Path, marker: str) -> tuple[str, ...]:
        return (self.python, str(self.folder / "writer.py"), str(nbytes), str(go), str(result), marker)
