"""Run each test file in its own pytest process (memory is returned between files) and sum the results.

Model tests load several models per file; one process per file keeps the suite's peak memory to that of
its largest file instead of the sum over the session. Prints one closing line: "N passed, N failed, N skipped".
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main(argv: list[str]) -> int:
    files = [Path(a) for a in argv] or sorted((ROOT / "tests").glob("test_*.py"))
    totals = {"passed": 0, "failed": 0, "skipped": 0}
    failed_files = []
    with tempfile.TemporaryDirectory() as tmp:
        for f in files:
            report = Path(tmp) / f"{f.stem}.xml"
            start = time.perf_counter()
            code = subprocess.call([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(f),
                                    f"--junitxml={report}"], cwd=ROOT)
            counts = {"tests": 0, "failures": 0, "errors": 0, "skipped": 0}
            if report.exists():
                suite = ET.parse(report).getroot()
                suite = suite if suite.tag == "testsuite" else suite.find("testsuite")
                counts = {k: int(suite.get(k, 0)) for k in counts}
            bad = counts["failures"] + counts["errors"]
            if code not in (0, 5) and not bad:
                bad = 1  # crashed (killed, import error) without a report of its own
            totals["failed"] += bad
            totals["skipped"] += counts["skipped"]
            totals["passed"] += counts["tests"] - counts["failures"] - counts["errors"] - counts["skipped"]
            print(f"[{f.name}: exit {code}, {time.perf_counter() - start:.0f}s]", flush=True)
            if bad:
                failed_files.append(f.name)
    if failed_files:
        print("failing files: " + ", ".join(failed_files))
    print(f"{totals['passed']} passed, {totals['failed']} failed, {totals['skipped']} skipped")
    return 1 if totals["failed"] or not totals["passed"] else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
