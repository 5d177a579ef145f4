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

RUN_EXIT_CODES = """exit codes (see docs/operations.md):
  0   stopped by SIGTERM/SIGINT after draining
  2   usage error (command line)
  69  a port to listen on is taken ([metrics] listen, [ingest.gt06] listen); a later start may succeed
  70  internal error (logged as gateway_crashed with the exception type and location)
  78  configuration: the config, a policy, the keys, a secret (password_env/password_file) or a TLS
      file cannot be used; the message names the key and the file or variable. Checked before
      connecting; with --workers N a worker exiting 78 stops the supervisor with 78."""

VALIDATE_EXIT_CODES = """exit codes:
  0   every check passed
  1   --connect: a broker could not be reached or refused the connection
  2   usage error
  78  configuration: the config, a policy, the keys, a secret or a TLS file cannot be used"""


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


def _startup_log(args: argparse.Namespace) -> tuple[Any, Any]:
    """Load the config and set up logging as it says; a config that cannot load is logged as JSON
    unless stderr is a terminal (the format it asks for is unknown)."""
    from gateway.service.config import ConfigError, load_config
    from gateway.telemetry import configure_logging, get_logger, route_process_output

    log = get_logger("gateway.startup")
    try:
        cfg = load_config(args.config)
    except ConfigError as exc:
        configure_logging(json=None)
        log.error("startup_failed", key="config", error=str(exc), code=78)
        return None, log
    supervisor = getattr(args, "workers", 1) > 1 and getattr(args, "worker", None) is None
    worker = "supervisor" if supervisor else (getattr(args, "worker", None) or 0)
    configure_logging(json={"auto": None, "json": True, "console": False}[cfg.log.format], level=cfg.log.level,
                      worker=worker)
    route_process_output()
    return cfg, log


def cmd_run(args: argparse.Namespace) -> int:
    import asyncio
    import errno

    from gateway.service import preflight as pf
    from gateway.telemetry import ListenError

    if args.workers < 1:
        print("gateway run: --workers must be at least 1", file=sys.stderr)
        return pf.EX_USAGE
    cfg, log = _startup_log(args)
    if cfg is None:
        return pf.EX_CONFIG
    if args.workers > 1 and not cfg.group:
        log.error("startup_failed", key="group", code=pf.EX_CONFIG,
                  error='--workers > 1 needs a shared-subscription group: set group = "..." in the config')
        return pf.EX_CONFIG
    try:
        pf.check_files(cfg)
        pf.check_engine(cfg)
    except pf.StartupError as exc:
        log.error("startup_failed", key=exc.key, error=str(exc), code=exc.code)
        return exc.code
    if args.workers > 1 and args.worker is None:
        from gateway.service.supervisor import supervise

        return supervise(cfg, args.config, args.workers)
    index = args.worker or 0
    try:
        return asyncio.run(_serve(cfg, index, args.workers))
    except pf.StartupError as exc:
        log.error("startup_failed", key=exc.key, error=str(exc), code=exc.code)
        return exc.code
    except ListenError as exc:
        code = pf.EX_UNAVAILABLE if exc.errno == errno.EADDRINUSE else pf.EX_CONFIG
        log.error("startup_failed", key="[metrics] listen", error=f"[metrics] listen {exc.strerror}", code=code)
        return code
    except OSError as exc:  # e.g. the GT06 port is taken, the spool cannot be created
        code = pf.EX_UNAVAILABLE if exc.errno == errno.EADDRINUSE else pf.EX_CONFIG
        where = f"{exc.filename}: " if exc.filename else ""
        log.error("startup_failed", key="", error=f"{where}{exc.strerror or exc.__class__.__name__}", code=code,
                  exc_info=exc)
        return code
    except Exception as exc:
        log.critical("gateway_crashed", exc_info=exc, code=pf.EX_SOFTWARE)
        return pf.EX_SOFTWARE


async def _serve(cfg: Any, index: int, workers: int) -> int:
    """One worker, with the loop's exception handler turning stray task errors into JSON events."""
    import asyncio
    import os

    from gateway.service import preflight as pf
    from gateway.service.config import ConfigError
    from gateway.service.supervisor import RESTARTS_ENV
    from gateway.service.worker import PolicySetError, Worker
    from gateway.telemetry import loop_exception_handler

    asyncio.get_running_loop().set_exception_handler(loop_exception_handler)
    worker = Worker(cfg, index, workers)
    worker.metrics.worker_restarts.inc(int(os.environ.get(RESTARTS_ENV, "0") or 0))
    try:
        return await worker.run()
    except (PolicyError, PolicySetError, KeyFileError) as exc:  # changed between the check and the start
        raise pf.StartupError("policies", str(exc)) from None
    except ConfigError as exc:
        raise pf.StartupError("config", str(exc)) from None


def cmd_validate(args: argparse.Namespace) -> int:
    """The start-up checks of ``gateway run`` without serving; ``--connect`` also tries both brokers once."""
    from gateway.service import preflight as pf
    from gateway.service.config import ConfigError, load_config

    def report(ok: bool | None, what: str, detail: str = "") -> None:
        print(f"{'ok  ' if ok else 'warn' if ok is None else 'FAIL'} {what}" + (f": {detail}" if detail else ""))

    try:
        cfg = load_config(args.config)
    except ConfigError as exc:
        report(False, "config", str(exc))
        return pf.EX_CONFIG
    report(True, "config", cfg.path)
    status = pf.EX_OK
    for name, check in (("secrets, TLS files, allow-list, spool folder", pf.check_files),
                        ("keys and policies (inline tests)", pf.check_engine)):
        try:
            check(cfg)
            report(True, name)
        except pf.StartupError as exc:
            report(False, str(exc))
            status = pf.EX_CONFIG
    ports = [("[metrics] listen", cfg.metrics.address())]
    if cfg.ingest.gt06.listen:
        ports.append(("[ingest.gt06] listen", cfg.ingest.gt06.address()))
    for key, address in ports:
        if address is None or not address[1]:
            continue
        try:
            pf.check_port(key, *address)
            report(True, key, f"{address[0]}:{address[1]} free")
        except pf.StartupError as exc:
            report(None, key, f"{exc.detail} (a running gateway holds it? `gateway run` would exit {exc.code})")
    if args.connect and status == pf.EX_OK:
        import asyncio

        from gateway.service.probe import probe

        for side, ep in (("local", cfg.local), ("cloud", cfg.cloud)):
            error = asyncio.run(probe(ep))
            report(not error, f"[{side}] {ep.url}", error or "CONNECT accepted, disconnected")
            if error:
                status = pf.EX_FAIL
    return status


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

    sp = sub.add_parser("run", help="run the gateway service (local broker -> minimise -> cloud)",
                        epilog=RUN_EXIT_CODES, formatter_class=argparse.RawDescriptionHelpFormatter)
    sp.add_argument("--config", required=True, help="config.toml (see docs/configuration.md)")
    sp.add_argument("--workers", type=int, default=1, help="worker processes on a shared subscription")
    sp.add_argument("--worker", type=int, default=None, help=argparse.SUPPRESS)  # set by the supervisor
    sp.set_defaults(func=cmd_run)

    sp = sub.add_parser("validate", help="run the start-up checks of `gateway run` without serving",
                        epilog=VALIDATE_EXIT_CODES, formatter_class=argparse.RawDescriptionHelpFormatter)
    sp.add_argument("--config", required=True, help="config.toml (see docs/configuration.md)")
    sp.add_argument("--connect", action="store_true", help="also connect to both brokers once (CONNECT, disconnect)")
    sp.set_defaults(func=cmd_validate)

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
