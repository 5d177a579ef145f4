"""The ``gateway`` command.

Offline tools (``check``, ``minimise``, ``explain``, ``bench``, ``keygen``,
``reveal``, ``decode``) for privacy engineers and auditors; their argument
names and output shapes are a contract (see docs/policy.md).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import msgspec

from gateway.keys import KeyFileError, Keyring, keygen
from gateway.pipeline import Engine, Forward
from gateway.policy.check import decode_output, run_tests
from gateway.policy.load import PolicyError, load

EXIT_OK, EXIT_FAIL, EXIT_INVALID = 0, 1, 2


def _keyring(args: argparse.Namespace) -> Keyring:
    if getattr(args, "test_keys", False):
        return Keyring.test()
    return Keyring.from_env(getattr(args, "keys", None))


def _engine(args: argparse.Namespace) -> Engine:
    return Engine([load(p) for p in args.policy], _keyring(args))


def _consents(pairs: list[str]) -> dict[str, frozenset[str]]:
    """``--consent DEVICE:PURPOSE`` (repeatable) as a device -> purposes map."""
    out: dict[str, set[str]] = defaultdict(set)
    for pair in pairs:
        device, sep, purpose = pair.rpartition(":")
        if not sep or not device or not purpose:
            raise SystemExit(f"gateway: --consent takes DEVICE:PURPOSE, got {pair!r}")
        out[device].add(purpose)
    return {k: frozenset(v) for k, v in out.items()}


def cmd_check(args: argparse.Namespace) -> int:
    status = EXIT_OK
    for path in args.policy:
        try:
            source = load(path)
            Engine([source], Keyring.test())  # compile: catches rule conflicts, not just schema
            ran, failures = run_tests(source)
        except PolicyError as exc:
            print(f"invalid: {exc}", file=sys.stderr)
            status = EXIT_INVALID
            continue
        for failure in failures:
            print(f"FAIL {failure}", file=sys.stderr)
        if failures:
            status = max(status, EXIT_FAIL)
        print(f"{'ok' if not failures else 'FAIL'} {path}: {ran - len(failures)}/{ran} inline tests passed")
    return status


def _reject_line(result, topic: str | None = None) -> str:
    line: dict[str, Any] = {"dropped": True, "reason": result.reason}
    if result.plan is not None:
        line["policy"] = result.plan.name
    if result.rule:
        line["rule"] = result.rule
    if result.detail:
        line["detail"] = result.detail
    return json.dumps(line)


def cmd_minimise(args: argparse.Namespace) -> int:
    engine = _engine(args)
    consents = _consents(args.consent)
    out, err = sys.stdout.buffer, sys.stderr
    for n, line in enumerate(sys.stdin.buffer, 1):
        line = line.strip()
        if not line:
            continue
        topic, payload = args.topic, line
        if topic is None:
            try:
                wrapper = msgspec.json.decode(line)
                topic = wrapper["topic"]
                payload = msgspec.json.encode(wrapper["payload"])
                if not isinstance(topic, str):
                    raise TypeError
            except (msgspec.DecodeError, KeyError, TypeError, RecursionError):
                print(json.dumps({"dropped": True, "line": n, "reason": "bad_wrapper",
                                  "detail": 'without --topic each line is {"topic": ..., "payload": {...}}'}), file=err)
                continue
        result = engine.process(topic, payload, now=time.time(), consents=consents)
        if isinstance(result, Forward):
            if result.plan.policy.policy.output == "msgpack":
                result = result._replace(payload=msgspec.json.encode(decode_output(result.payload, "msgpack")))
            if args.topic is None:
                out.write(b'{"topic":' + msgspec.json.encode(result.topic) + b',"payload":' + result.payload + b"}\n")
            else:
                out.write(result.payload + b"\n")
        else:
            print(_reject_line(result), file=err)
    out.flush()
    return EXIT_OK


def cmd_explain(args: argparse.Namespace) -> int:
    from gateway.explain import explain

    engine = _engine(args)
    report = explain(engine, args.topic, sys.stdin.buffer.read().strip(), _consents(args.consent))
    if args.json:
        print(json.dumps(report, ensure_ascii=False))
        return EXIT_OK
    print(f"policy: {report['policy'] or '(none matches this topic)'}")
    print(f"input:  {json.dumps(report['input'], ensure_ascii=False)}")
    if report["dropped"]:
        rule = f" (rule {report['rule']}" + (f", {report['detail']})" if report.get("detail") else ")") if report.get("rule") else ""
        print(f"output: DROPPED: {report['reason']}{rule}: {report['reason_text']}")
    else:
        print(f"topic:  {report['topic']}")
        print(f"output: {json.dumps(report['output'], ensure_ascii=False)}")
    width = max((len(f["path"]) for f in report["fields"]), default=4)
    for f in report["fields"]:
        print(f"  {f['path']:<{width}}  {f['action']:<16}  {f['why']}")
    return EXIT_OK


def cmd_bench(args: argparse.Namespace) -> int:
    from gateway.bench import run_bench

    keyring = Keyring.test() if not args.keys else Keyring.from_env(args.keys)
    result = run_bench(load(args.policy), keyring, args.topic, Path(args.input), args.seconds, args.leak_guard)
    if args.json:
        print(json.dumps(result))
    else:
        print(f"{result['messages']} messages in {result['seconds']:.2f} s: {result['msgs_per_s']:,.0f} msg/s "
              f"({result['us_per_msg']:.2f} us/msg, {result['forwarded']} forwarded, {result['rejected']} rejected)")
    return EXIT_OK


def cmd_keygen(args: argparse.Namespace) -> int:
    kid = keygen(args.path, args.id, args.rotate)
    print(f"{'added' if args.rotate else 'wrote'} key {kid!r} to {args.path} (mode 0600); it is now the active key",
          file=sys.stderr)
    return EXIT_OK


def cmd_reveal(args: argparse.Namespace) -> int:
    from gateway.ops.identity import reveal

    keyring = Keyring.from_env(args.keys)
    values = args.value or [line.strip() for line in sys.stdin if line.strip()]
    status = EXIT_OK
    for value in values:
        try:
            print(reveal(keyring, value))
        except ValueError as exc:
            print(f"gateway reveal: {exc}", file=sys.stderr)
            status = EXIT_FAIL
    return status


def cmd_decode(args: argparse.Namespace) -> int:
    from gateway.ingest.gt06.describe import decode_hex_command

    return decode_hex_command(args.hex, sys.stdout)


def cmd_demo(args: argparse.Namespace) -> int:
    from gateway.demo import run_demo

    return run_demo(args)


def cmd_run(args: argparse.Namespace) -> int:
    import asyncio

    from gateway.service.config import ConfigError, load_config
    from gateway.service.supervisor import supervise
    from gateway.service.worker import PolicySetError, Worker
    from gateway.telemetry import configure_logging

    try:
        cfg = load_config(args.config)
    except ConfigError as exc:
        print(f"gateway: invalid config: {exc}", file=sys.stderr)
        return EXIT_INVALID
    configure_logging(json={"auto": None, "json": True, "console": False}[cfg.log.format], level=cfg.log.level)
    if args.workers < 1:
        print("gateway: --workers must be at least 1", file=sys.stderr)
        return EXIT_INVALID
    if args.workers > 1 and args.worker is None:
        if not cfg.group:
            print("gateway: --workers > 1 needs a shared-subscription group: set group = \"...\" in the config",
                  file=sys.stderr)
            return EXIT_INVALID
        return supervise(args.config, args.workers)
    try:
        return asyncio.run(Worker(cfg, args.worker or 0, args.workers).run())
    except (PolicySetError, ConfigError) as exc:
        print(f"gateway: {exc}", file=sys.stderr)
        return EXIT_INVALID
    except OSError as exc:  # e.g. the metrics or GT06 port is taken, the spool path is not writable
        print(f"gateway: {exc.strerror or exc}: {exc.filename or ''}".rstrip(": "), file=sys.stderr)
        return EXIT_INVALID


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="gateway", description="Telemetry data-minimisation gateway.")
    sub = p.add_subparsers(dest="command", required=True)

    def keys_opts(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("--keys", metavar="FILE", help="key file (default: $GATEWAY_KEYS_FILE or $GATEWAY_KEYS)")
        sp.add_argument("--test-keys", action="store_true", help="use the public test key (as inline tests do)")

    sp = sub.add_parser("check", help="validate policies and run their inline tests")
    sp.add_argument("policy", nargs="+")
    sp.set_defaults(func=cmd_check)

    sp = sub.add_parser("minimise", help="minimise JSON lines from stdin")
    sp.add_argument("--policy", action="append", required=True, help="policy file (repeat for several)")
    sp.add_argument("--topic", help="topic of every line (else lines are {\"topic\", \"payload\"})")
    sp.add_argument("--consent", action="append", default=[], metavar="DEVICE:PURPOSE")
    keys_opts(sp)
    sp.set_defaults(func=cmd_minimise)

    sp = sub.add_parser("explain", help="show what the policy does to one message from stdin, and why")
    sp.add_argument("--policy", action="append", required=True)
    sp.add_argument("--topic", required=True)
    sp.add_argument("--json", action="store_true")
    sp.add_argument("--consent", action="append", default=[], metavar="DEVICE:PURPOSE")
    keys_opts(sp)
    sp.set_defaults(func=cmd_explain)

    sp = sub.add_parser("bench", help="measure the hot path in-process")
    sp.add_argument("--policy", required=True)
    sp.add_argument("--topic", required=True)
    sp.add_argument("--input", required=True, help="JSON lines, one message payload per line")
    sp.add_argument("--seconds", type=float, default=3.0)
    sp.add_argument("--leak-guard", choices=("policy", "on", "off"), default="policy")
    sp.add_argument("--json", action="store_true")
    sp.add_argument("--keys", metavar="FILE", help="key file (default: the public test key)")
    sp.set_defaults(func=cmd_bench)

    sp = sub.add_parser("keygen", help="write a new key file (0600)")
    sp.add_argument("path")
    sp.add_argument("--id", help="key id ([a-z0-9]{1,16}); default k1, or k<N> with --rotate")
    sp.add_argument("--rotate", action="store_true", help="add a new active key to an existing file")
    sp.set_defaults(func=cmd_keygen)

    sp = sub.add_parser("reveal", help="decrypt enc.<kid>.<data> values (key holders only)")
    sp.add_argument("value", nargs="*", help="values (default: one per line on stdin)")
    sp.add_argument("--keys", metavar="FILE")
    sp.set_defaults(func=cmd_reveal)

    sp = sub.add_parser("decode", help="decode device frames, e.g. gateway decode gt06 HEX")
    sp.add_argument("protocol", choices=("gt06",))
    sp.add_argument("hex", nargs="+")
    sp.set_defaults(func=cmd_decode)

    sp = sub.add_parser("run", help="run the gateway service (local broker -> minimise -> cloud)")
    sp.add_argument("--config", required=True, help="config.toml (see docs/configuration.md)")
    sp.add_argument("--workers", type=int, default=1, help="worker processes on a shared subscription")
    sp.add_argument("--worker", type=int, default=None, help=argparse.SUPPRESS)  # set by the supervisor
    sp.set_defaults(func=cmd_run)

    sp = sub.add_parser("demo", help="live demo: brokers, simulated devices, gateway, what the cloud receives")
    sp.add_argument("--count", type=int, default=500, help="messages per system in the load run")
    sp.add_argument("--offline", action="store_true", help="no brokers: the policies' samples through the engine")
    sp.set_defaults(func=cmd_demo)
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        return args.func(args)
    except PolicyError as exc:
        print(f"gateway: invalid policy: {exc}", file=sys.stderr)
        return EXIT_INVALID
    except KeyFileError as exc:
        print(f"gateway: {exc}", file=sys.stderr)
        return EXIT_INVALID
    except BrokenPipeError:
        return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
