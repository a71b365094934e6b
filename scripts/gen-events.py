#!/usr/bin/env python3
"""Writes examples/events.jsonl: order events as an at-least-once broker delivers them.

About 1,000 events, ~10 % of them redelivered later in the stream (some re-serialised with
keys in another order or other whitespace, still with the same eventId), plus four lines
`oncely dedup --key /eventId` must reject: one that is not JSON, one without eventId, one
with an empty eventId and a blank line.

Deterministic (fixed seed, standard library only), so the file and the counts it prints are
the same on every machine:

    python3 scripts/gen-events.py [OUT]      # OUT defaults to examples/events.jsonl

It prints the counts `oncely dedup --key /eventId` should report, in its summary's format.
"""

import json
import os
import random
import sys

SEED = 20260101
EVENTS = 1000
REDELIVERIES = 100
TYPES = ["OrderPlaced", "OrderPaid", "OrderShipped", "OrderCancelled"]


def compact(event):
    return json.dumps(event, separators=(",", ":"))


def redelivered(event, rng):
    """The same event as a producer retry or a broker redelivery might serialise it."""
    style = rng.random()
    if style < 0.6:
        return compact(event)
    if style < 0.8:
        return compact(dict(reversed(list(event.items()))))
    return json.dumps(event, separators=(" , ", " : ")).replace("{", "{ ").replace("}", " }")


def generate(rng):
    events = [
        {
            "eventId": f"evt-{i:06d}",
            "type": rng.choice(TYPES),
            "orderId": f"ord-{rng.randint(1, 400):05d}",
            "amount": round(rng.uniform(5, 500), 2),
        }
        for i in range(1, EVENTS + 1)
    ]
    lines = [compact(e) for e in events]
    # Each redelivery lands a little after its original, as after a consumer restart.
    for index in sorted(rng.sample(range(EVENTS), REDELIVERIES)):
        original = lines.index(compact(events[index]))
        at = rng.randint(original + 1, min(len(lines), original + 80))
        lines.insert(at, redelivered(events[index], rng))
    bad = [
        '{"eventId": "evt-bad-1", "type": "OrderPlaced", "amount": 12.5',  # cut off: not JSON
        '{"type": "OrderPaid", "orderId": "ord-00042", "amount": 99.0}',  # no eventId
        '{"eventId": "", "type": "OrderShipped", "orderId": "ord-00007"}',  # empty eventId
        "",  # blank line
    ]
    for line in bad:
        lines.insert(rng.randint(1, len(lines) - 1), line)
    return lines


def expected_counts(lines):
    """What `oncely dedup --key /eventId` must report for these lines, on an empty store."""
    seen, passed, duplicates, rejected = set(), 0, 0, []
    for number, line in enumerate(lines, start=1):
        try:
            key = json.loads(line).get("eventId") if line.strip() else None
        except ValueError:
            key = None
        if not isinstance(key, str) or not key:
            rejected.append(number)
        elif key in seen:
            duplicates += 1
        else:
            seen.add(key)
            passed += 1
    return passed, duplicates, rejected


def main():
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    default = os.path.join(root, "examples", "events.jsonl")
    out = sys.argv[1] if len(sys.argv) > 1 else default
    lines = generate(random.Random(SEED))
    with open(out, "w", encoding="utf-8", newline="\n") as f:
        f.write("".join(line + "\n" for line in lines))
    passed, duplicates, rejected = expected_counts(lines)
    print(f"wrote {len(lines)} lines to {'examples/events.jsonl' if out == default else out}")
    print(f"read {len(lines)}, passed {passed}, duplicates {duplicates}, rejected {len(rejected)}")
    print("rejected lines: " + ", ".join(str(n) for n in rejected))


if __name__ == "__main__":
    main()
