"""``gateway demo``: the bundled policies applied to their sample messages, before and after.

Each policy in rules/ carries realistic sample messages in its inline tests
(including the awkward ones: a card number in a note, a PIN, an IPv6 login).
The demo runs them through the same engine the service uses, with the public
test key, and shows what leaves the site.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from datetime import datetime
from pathlib import Path

import msgspec

from gateway.keys import Keyring
from gateway.pipeline import Engine, Forward
from gateway.policy.check import AnyDevice, decode_output
from gateway.policy.load import load

RULES = Path(__file__).resolve().parent.parent / "rules"


def _colour(text: str, code: str, on: bool) -> str:
    return f"\033[{code}m{text}\033[0m" if on else text


def run_demo(args: argparse.Namespace) -> int:
    tty = sys.stdout.isatty()
    for path in sorted(RULES.glob("*.toml")):
        source = load(path)
        engine = Engine([source], Keyring.test())
        meta = source.policy.policy
        print(_colour(f"== {meta.name} {meta.version}: {meta.description}", "1", tty))
        totals: Counter = Counter()
        for test in source.policy.test:
            now = datetime.fromisoformat(test.now).timestamp()
            raw = msgspec.json.encode(test.input)
            result = engine.process(test.topic, raw, now=now, consents=AnyDevice(test.consent))
            print(f"  {test.name}" + (f"  [consent: {', '.join(test.consent)}]" if test.consent else ""))
            print(_colour(f"    in   {test.topic}  {raw.decode()}", "31", tty))
            if isinstance(result, Forward):
                out = json.dumps(decode_output(result.payload, meta.output), separators=(",", ":"))
                print(_colour(f"    out  {result.topic}  {out}", "32", tty))
                totals["forwarded"] += 1
            else:
                rule = f" (rule {result.rule})" if result.rule else ""
                print(_colour(f"    DROPPED: {result.reason}{rule}", "33", tty))
                totals["dropped"] += 1
        actions = engine.plans[0].action_counts()
        summary = ", ".join(f"{k} {v}" for k, v in sorted(actions.items()) if v)
        print(f"  -> {totals['forwarded']} forwarded, {totals['dropped']} dropped; field actions: {summary}\n")
    return 0
