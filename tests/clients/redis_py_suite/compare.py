"""Compares JUnit XML results of redis-py's test suite run directly against
redis-server and through keyway (tests/clients/redis_py_suite.sh).

Usage: compare.py --expected FILE --min-direct N --version V \
                  'direct=DIRECT.xml' 'LABEL=RUN.xml' ...

Prints each run's counts, then, per keyway run, the tests that pass directly
but not through keyway, split into those FILE lists as keyway's deliberate
differences and the unexpected rest. Exit status 0 when no run has an
unexpected difference and the direct run passed at least N tests, else 1.

A test id is the JUnit `classname::name`, e.g.
`tests.test_commands.TestRedisCommands::test_auth` or
`tests.test_asyncio.test_monitor.TestMonitor::test_lua_script[pool]`.
FILE holds one id pattern a line, `*` matching any characters (nothing
else is special, so `[pool]` is literal), in groups: a block of `#` comment
lines starts a group (its first line is the reason printed), and
`message: REGEX` lines in a group require a listed test's failure message
to match one of them, so a listed test failing for another reason is still
reported as unexpected.
"""
import argparse
import re
import sys
import xml.etree.ElementTree as ET

# outcomes that count as passing
PASSING = {"passed", "xpassed", "xfailed"}
# worst first: a test reported twice (call failure and teardown error) keeps the worst
RANK = ["error", "failed", "skipped", "xfailed", "xpassed", "passed"]


def load(path):
    """{test id: (outcome, message)} from a JUnit XML file."""
    results = {}
    for tc in ET.parse(path).getroot().iter("testcase"):
        tid = f"{tc.get('classname')}::{tc.get('name')}"
        outcome, msg = "passed", ""
        for ch in tc:
            if ch.tag in ("failure", "error"):
                outcome = "failed" if ch.tag == "failure" else "error"
                msg = ch.get("message") or ""
                break
            if ch.tag == "skipped":
                outcome = "xfailed" if ch.get("type") == "pytest.xfail" else "skipped"
                msg = ch.get("message") or ""
            if ch.tag == "properties" and outcome == "passed":
                if any(p.get("name") == "xpassed" for p in ch.iter("property")):
                    outcome = "xpassed"
        old = results.get(tid)
        if old is not None:
            # reported twice (a failed call, then an error in teardown):
            # the worse outcome, and both messages
            if RANK.index(old[0]) < RANK.index(outcome):
                outcome = old[0]
            msg = f"{old[1]} // {msg}" if old[1] and msg else old[1] or msg
        results[tid] = (outcome, msg)
    return results


def counts(results):
    c = {k: 0 for k in RANK}
    for outcome, _ in results.values():
        c[outcome] += 1
    return c


class Group:
    def __init__(self, reason):
        self.reason = reason
        self.messages = []  # compiled regexes; empty: any failure message

    def accepts(self, msg):
        return not self.messages or any(rx.search(msg) for rx in self.messages)


def load_patterns(path):
    """[(pattern text, compiled id regex, Group)] in file order."""
    patterns, group, in_comment = [], Group(""), False
    with open(path) as f:
        for line in f:
            line = line.strip()
            if not line:
                in_comment = False
            elif line.startswith("#"):
                if not in_comment:
                    group, in_comment = Group(line.lstrip("#").strip()), True
            elif line.startswith("message:"):
                in_comment = False
                group.messages.append(re.compile(line[len("message:"):].strip()))
            else:
                in_comment = False
                rx = "".join(".*" if ch == "*" else re.escape(ch) for ch in line)
                patterns.append((line, re.compile(rx + r"\Z"), group))
    return patterns


def one_line(msg, width=160):
    msg = " ".join(msg.split())
    return msg if len(msg) <= width else msg[: width - 3] + "..."


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--expected", required=True)
    ap.add_argument("--min-direct", type=int, required=True)
    ap.add_argument("--version", required=True)
    ap.add_argument("runs", nargs="+", help="LABEL=JUNIT.xml, the direct run first")
    args = ap.parse_args()

    patterns = load_patterns(args.expected)
    runs, broken = [], []
    for spec in args.runs:
        label, path = spec.split("=", 1)
        try:
            runs.append((label, load(path)))
        except (OSError, ET.ParseError) as e:
            broken.append(label)
            print(f"{label}: no usable JUnit XML ({e})")
            runs.append((label, None))

    print("\nresults (JUnit XML; xpassed and xfailed count as passing):")
    width = max(len(label) for label, _ in runs)
    for label, res in runs:
        if res is None:
            print(f"  {label:<{width}}  (no results)")
            continue
        c = counts(res)
        print(f"  {label:<{width}}  passed {c['passed']:5}  xpassed {c['xpassed']:3}  "
              f"xfailed {c['xfailed']:3}  failed {c['failed']:3}  errors {c['error']:3}  "
              f"skipped {c['skipped']:4}")

    ok = not broken
    direct_label, direct = runs[0]
    summary = []
    if direct is not None:
        direct_pass = counts(direct)["passed"]
        summary.append(f"{direct_label} {direct_pass} passed")
        if direct_pass < args.min_direct:
            ok = False
            print(f"\n{direct_label}: only {direct_pass} tests passed (expected at least "
                  f"{args.min_direct}): the set-up is broken, nothing was compared")
            direct = None

    total_unexpected = 0
    used = set()
    for label, res in runs[1:]:
        if res is None:
            summary.append(f"{label} no results")
            continue
        summary.append(f"{label} {counts(res)['passed']}")
        if direct is None:
            continue
        expected, unexpected = [], []
        for tid, (outcome, _) in direct.items():
            if outcome not in PASSING:
                continue
            got, msg = res.get(tid, ("missing", "not run"))
            if got in PASSING:
                continue
            match = next((p for p in patterns if p[1].match(tid)), None)
            if match and match[2].accepts(msg):
                used.add(match[0])
                expected.append((tid, got, msg, match[2].reason))
            elif match:
                unexpected.append((tid, got, "(listed as expected, but fails for another "
                                   f"reason than '{match[2].reason}') {msg}"))
            else:
                unexpected.append((tid, got, msg))
        print(f"\n{label}: {len(expected) + len(unexpected)} tests pass directly but not "
              f"through keyway: {len(expected)} expected, {len(unexpected)} unexpected")
        by_reason = {}
        for _, _, _, reason in expected:
            by_reason[reason] = by_reason.get(reason, 0) + 1
        for reason, n in by_reason.items():
            print(f"  expected {n:3}  {reason}")
        for tid, got, msg in unexpected:
            print(f"  UNEXPECTED {got:7} {tid} | {one_line(msg)}")
        total_unexpected += len(unexpected)

    if direct is not None and not broken:
        # listed, among the tests that ran and passed directly, yet never a difference
        passing = [tid for tid, (outcome, _) in direct.items() if outcome in PASSING]
        stale = [p[0] for p in patterns
                 if p[0] not in used and any(p[1].match(tid) for tid in passing)]
        if stale:
            print("\nnote: expected differences that no longer differ in any run "
                  "(remove them from the list once keyway passes them on purpose):")
            for p in stale:
                print(f"  {p}")

    if total_unexpected:
        ok = False
    unexpected_text = str(total_unexpected) if direct is not None else "not compared"
    print(f"\nredis-py {args.version} suite: {'; '.join(summary)}; "
          f"unexpected differences: {unexpected_text}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
