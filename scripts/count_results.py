"""Sums the results of every suite in the given build directories.

meson's summary counts a unit-test binary as one test; tether's unit tests
print TAP, so each case is counted from its ok / not ok line. The
integration suite writes a JUnit file, counted per pytest case. Anything else
counts as one result. Prints a table per build and, last, one plain line:
"N passed, N failed".
"""
import json
import os
import re
import sys
import xml.etree.ElementTree as ET

TAP = re.compile(r"^(not ok|ok)\b", re.M)


def count_build(build):
    passed = failed = 0
    log = os.path.join(build, "meson-logs", "testlog.json")
    if not os.path.exists(log):
        print(f"{build}: no test log", file=sys.stderr)
        return 0, 1
    # The log holds one JSON object per line; a test that ran twice keeps
    # its last result.
    results = {}
    with open(log) as f:
        for line in f:
            line = line.strip()
            if line:
                r = json.loads(line)
                results[r["name"]] = r
    for name, r in sorted(results.items()):
        ok = r["result"] in ("OK", "EXPECTEDFAIL")
        if r["name"].endswith("integration"):
            p, fl = count_junit(os.path.join(build, "tests", "integration.xml"))
            if not ok and fl == 0:
                fl = 1  # pytest itself failed before reporting
        elif TAP.search(out := r.get("stdout", r.get("stdo", "")) or ""):
            marks = TAP.findall(out)
            p = sum(1 for m in marks if m == "ok")
            fl = sum(1 for m in marks if m == "not ok")
            if not ok and fl == 0:
                fl = 1  # crashed before or after its cases
        else:
            p, fl = (1, 0) if ok else (0, 1)
        print(f"  {build:12} {name:40} {p:5} passed {fl:3} failed")
        passed += p
        failed += fl
    return passed, failed


def count_junit(path):
    if not os.path.exists(path):
        return 0, 1
    root = ET.parse(path).getroot()
    suites = [root] if root.tag == "testsuite" else root.findall("testsuite")
    total = fail = skip = 0
    for s in suites:
        total += int(s.get("tests", 0))
        fail += int(s.get("failures", 0)) + int(s.get("errors", 0))
        skip += int(s.get("skipped", 0))
    return total - fail - skip, fail


def main():
    passed = failed = 0
    for build in sys.argv[1:]:
        p, f = count_build(build)
        passed += p
        failed += f
    print(f"{passed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
