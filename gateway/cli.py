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

from gateway.keys import KeyFileError, Keyring, keygen, retire
from gateway.pipeline import Engine, Forward
from gateway.policy.check import decode_output, run_tests
from gateway.policy.load import PolicyError, load

EXIT_OK, EXIT_FAIL, EXIT_INVALID = 0, 1, 2

RUN_EXIT_CODES = (
    "exit codes: 0 stopped by SIGTERM/SIGINT after draining; 2 usage error (command line); "
    "69 a port to listen on is taken ([metrics] listen, [ingest.gt06] listen): a later start may succeed; "
    "70 internal error (logged as gateway_crashed with the exception type and location); "
    "78 configuration: the config, a policy, the keys, a secret (password_env/password_file) or a TLS file "
    "cannot be used, checked before connecting, the message naming the key and the file or variable; "
    "with --workers N a worker exiting 78 stops the supervisor with 78 (docs/operations.md, Exit codes)"
)

VALIDATE_EXIT_CODES = (
    "exit codes: 0 every check passed; 1 --connect: a broker could not be reached or refused the connection; "
    "2 usage error; 78 configuration: the config, a policy, the keys, a secret or a TLS file cannot be used"
)


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
    from gateway.policy import signing

    status = EXIT_OK
    trusted = signing.trusted(args.trusted_key) if args.trusted_key else None
    for path in args.policy:
        try:
            source = load(path, trusted)
            if trusted is not None:
                print(f"signature ok {path}: signed by key {source.signer}")
            engine = Engine([source], Keyring.test())  # compile: catches rule conflicts, not just schema
            if args.dump_code:
                _dump_code(engine)
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


def _dump_code(engine: Engine) -> None:
    """The Python generated for each plan (what a traceback through the hot path points into)."""
    from gateway.policy.codegen import sources

    for plan in engine.plans:
        generated = sources(engine.runner(plan))
        if not generated:
            print(f"# {plan.name}: default = \"keep\", run by the dict interpreter (no generated code)")
        for filename, source in generated:
            print(f"# --- {filename}\n{source}")


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
        try:
            result = engine.process(topic, payload, now=time.time(), consents=consents)
        except Exception as exc:  # one bad line costs that line, never the rest of the input
            print(json.dumps({"dropped": True, "line": n, "reason": "internal_error",
                              "detail": exc.__class__.__name__}), file=err)  # the type only: no payload text
            continue
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


def cmd_diff(args: argparse.Namespace) -> int:
    """Both policies over the same stream: what changes, per field path and rule (examples minimised, never raw)."""
    import secrets

    from gateway.policy.diff import Summary, compare

    old, new = load(args.old), load(args.new)
    # Without --keys: a key of this run only; both sides compare alike, and no example reverses with a known key.
    keyring = _keyring(args) if args.keys or args.test_keys else Keyring("diff", {"diff": secrets.token_bytes(32)})
    before, after = Engine([old], keyring), Engine([new], keyring)
    consents, now = _consents(args.consent), time.time()
    summary = Summary()
    with open(args.input, "rb") as f:
        for line in f:
            line = line.strip()
            if not line:
                continue
            try:
                wrapper = msgspec.json.decode(line)
                topic, payload = wrapper["topic"], msgspec.json.encode(wrapper["payload"])
                if not isinstance(topic, str):
                    raise TypeError
            except (msgspec.DecodeError, KeyError, TypeError, RecursionError):
                summary.bad_lines += 1
                continue
            a = before.process(topic, payload, now=now, consents=consents)
            b = after.process(topic, payload, now=now, consents=consents)
            summary.add(compare(a, b), (getattr(a, "topic", None), getattr(b, "topic", None)), args.examples)
    report = summary.to_json()
    if args.json:
        print(json.dumps(report, ensure_ascii=False))
    else:
        print(f"{report['messages']} messages, {report['changed_messages']} change"
              + (f", {report['bad_lines']} lines not {{topic, payload}}" if report["bad_lines"] else ""))
        for row in report["changes"]:
            print(f"  {row['messages']:>7}  {row['kind']:<14} {row['path']}  [{row['rule']}]")
            for ex in row["examples"]:
                print(f"             old: {json.dumps(ex['old'], ensure_ascii=False)}"
                      f"  new: {json.dumps(ex['new'], ensure_ascii=False)}")
    if summary.bad_lines and not summary.messages:
        return EXIT_INVALID
    return EXIT_FAIL if summary.changed else EXIT_OK


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
        detail = f", {report['detail']})" if report.get("detail") else ")"
        rule = f" (rule {report['rule']}{detail}" if report.get("rule") else ""
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
    if args.signing:
        from gateway.policy.signing import keygen_signing

        if args.path or args.rotate or args.id:
            print("gateway keygen: --signing FILE takes no other argument", file=sys.stderr)
            return EXIT_INVALID
        kid = keygen_signing(args.signing)
        print(f"wrote signing key {kid} to {args.signing} (mode 0600) and {args.signing}.pub (give that to sites)",
              file=sys.stderr)
        return EXIT_OK
    if not args.path:
        print("gateway keygen: give a key file path (or --signing FILE)", file=sys.stderr)
        return EXIT_INVALID
    if args.retire:
        if args.rotate or args.id:
            print("gateway keygen: --retire ID takes only the key file", file=sys.stderr)
            return EXIT_INVALID
        retire(args.path, args.retire)
        print(f"retired key {args.retire!r} from {args.path}: values it made can no longer be revealed",
              file=sys.stderr)
        return EXIT_OK
    kid = keygen(args.path, args.id, args.rotate)
    print(f"{'added' if args.rotate else 'wrote'} key {kid!r} to {args.path} (mode 0600); it is now the active key",
          file=sys.stderr)
    return EXIT_OK


def cmd_sign(args: argparse.Namespace) -> int:
    from gateway.policy import signing

    key = signing.load_private(args.key)
    for path in args.policy:
        load(path)  # never sign a pack that does not even load
        print(f"signed {path} -> {signing.sign(key, path)} (key {signing.key_id(key.public_key())})")
    return EXIT_OK


def cmd_reveal(args: argparse.Namespace) -> int:
    from gateway.ops.identity import reveal

    keyring = _keyring(args)
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
    if args.protocol == "jt808":
        from gateway.ingest.jt808.describe import decode_hex_command as jt808
        return jt808(args.hex, sys.stdout)
    from gateway.ingest.gt06.describe import decode_hex_command

    return decode_hex_command(args.hex, sys.stdout)


def cmd_consent(args: argparse.Namespace) -> int:
    """``gateway consent keygen|sign``: the issuer's side of signed consent records."""
    from gateway.service import consent

    try:
        if args.action == "keygen":
            print(consent.keygen(args.path))
            print(f"wrote the consent issuer's private key to {args.path} (0600); the line above is its public key "
                  "for [consent] public_keys", file=sys.stderr)
            return EXIT_OK
        key = consent.load_private_key(args.key)
    except consent.ConsentKeyError as exc:
        print(f"gateway consent: {exc}", file=sys.stderr)
        return EXIT_INVALID
    now = int(time.time()) if args.issued_at is None else args.issued_at
    expires = None if args.expires_in is None else now + args.expires_in
    record = consent.sign(key, args.device, args.purpose, args.action == "grant", now, expires)
    sys.stdout.buffer.write(record + b"\n")
    return EXIT_OK


def cmd_deadletter(args: argparse.Namespace) -> int:
    """``gateway deadletter open``: sealed dead letters (one per line on stdin) as JSON lines, for key holders."""
    import base64

    from gateway.service.deadletter import open_letter

    keyring = Keyring.from_env(args.keys)
    status = EXIT_OK
    for n, line in enumerate(sys.stdin.buffer, 1):
        line = line.strip()
        if not line:
            continue
        try:
            letter = open_letter(keyring, line)
        except ValueError as exc:
            print(f"gateway deadletter: line {n}: {exc}", file=sys.stderr)
            status = EXIT_FAIL
            continue
        try:
            payload: Any = letter.payload.decode()
            encoding = "utf-8"
        except UnicodeDecodeError:
            payload, encoding = base64.b64encode(letter.payload).decode(), "base64"
        print(json.dumps({"topic": letter.topic, "payload": payload, "encoding": encoding, "reason": letter.reason,
                          "policy": letter.policy, "rule": letter.rule, "at": letter.at}, ensure_ascii=False))
    return status


def cmd_demo(args: argparse.Namespace) -> int:
    from gateway.demo import run_demo

    return run_demo(args)


def cmd_init(args: argparse.Namespace) -> int:
    from gateway.bundle import InitError, init_site

    try:
        written = init_site(args.folder, systemd=args.systemd)
    except InitError as exc:
        print(f"gateway init: {exc}", file=sys.stderr)
        return EXIT_FAIL
    except OSError as exc:  # not a folder, not writable
        print(f"gateway init: {exc.strerror or exc}: {exc.filename or args.folder}", file=sys.stderr)
        return EXIT_FAIL
    for path in written:
        print(path)
    folder = Path(args.folder)
    print(f"next: gateway check {folder / 'rules'}/*.toml && gateway run --config {folder / 'config.toml'}",
          file=sys.stderr)
    return EXIT_OK


def _version() -> str:
    from gateway.telemetry import _package_version

    return _package_version()


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
    except Exception as exc:  # a bug in a check: its type and place, never its text
        log.critical("gateway_crashed", exc_info=exc, code=pf.EX_SOFTWARE)
        return pf.EX_SOFTWARE
    if args.workers > 1 and args.worker is None:
        from gateway.service.supervisor import supervise

        try:
            return supervise(cfg, args.config, args.workers)
        except ListenError as exc:  # the one scrape target's port
            code = pf.EX_UNAVAILABLE if exc.errno == errno.EADDRINUSE else pf.EX_CONFIG
            log.error("startup_failed", key="[metrics] listen", error=f"[metrics] listen {exc.strerror}", code=code)
            return code
    if args.worker is not None:  # a supervised worker
        import os

        from gateway.service.supervisor import PARENT_ENV, die_with_parent

        if os.environ.get(PARENT_ENV, "").isdigit():
            die_with_parent(int(os.environ[PARENT_ENV]))
    if args.metrics_listen is not None:  # a supervised worker: its page is merged by the supervisor
        cfg.metrics.listen = args.metrics_listen
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
        log.error("startup_failed", key="", error=f"{where}{exc.strerror or str(exc) or exc.__class__.__name__}",
                  code=code, exc_info=exc)
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
    except KeyFileError as exc:  # changed between the check and the start
        raise pf.StartupError("keys_file", str(exc)) from None
    except (PolicyError, PolicySetError) as exc:
        raise pf.StartupError("policies", str(exc)) from None
    except ConfigError as exc:
        raise pf.StartupError(str(exc).split(" ", 1)[0].rstrip(":"), str(exc)) from None


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
    for name, ingest in (("gt06", cfg.ingest.gt06), ("jt808", cfg.ingest.jt808)):
        if ingest.listen:
            ports.append((f"[ingest.{name}] listen", ingest.address()))
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


EXITS_OFFLINE = "exit codes: 0 ok; 2 invalid policy, key file or arguments"


def _epilog(examples: list[str], exits: str) -> str:
    return "examples:\n" + "".join(f"  {e}\n" for e in examples) + "\n" + exits


def cmd_spool(args: argparse.Namespace) -> int:
    """``gateway spool list|resend|purge``: the quarantine of messages the cloud refused.

    list and purge work while the gateway runs (SQLite serialises the writes, and
    the gateway recounts the quarantine); resend moves rows into the spool the running
    gateway counts, so it is refused until the gateway (that worker) is stopped."""
    from gateway.service.config import ConfigError, load_config
    from gateway.service.worker import _indexed
    from gateway.spool import Spool, SpoolError

    try:
        cfg = load_config(args.config)
    except (ConfigError, OSError, ValueError) as exc:
        print(f"gateway spool: {args.config}: {exc}", file=sys.stderr)
        return EXIT_INVALID
    path = cfg.spool.path if args.worker == 0 else _indexed(cfg.spool.path, args.worker)
    if not Path(path).exists():
        print(f"gateway spool: no spool file at {path}", file=sys.stderr)
        return EXIT_INVALID
    ids = args.id or None
    if args.action in ("resend", "purge") and ids is None and not args.all:
        print(f"gateway spool {args.action}: name messages with --id ID (repeatable) or take all with --all",
              file=sys.stderr)
        return EXIT_INVALID
    try:
        spool = Spool(path, cfg.spool.max_bytes, exclusive=args.action == "resend", lock_wait_s=0)
    except SpoolError as exc:
        hint = "; stop the gateway first (resend changes the spool it is draining)" if exc.kind == "busy" else ""
        print(f"gateway spool: {exc}{hint}", file=sys.stderr)
        return EXIT_FAIL
    try:
        if args.action == "list":
            rows = spool.quarantined(args.limit)
            for q in rows:
                when = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(q.quarantined))
                if args.json:
                    out = {"id": q.id, "quarantined": when, "reason": f"0x{q.reason:02x}", "policy": q.device,
                           "topic": q.topic, "qos": q.qos, "bytes": len(q.payload)}
                    if args.payload:
                        out["payload"] = q.payload.decode("utf-8", "replace")
                    print(json.dumps(out))
                else:
                    print(f"{q.id}\t{when}\t0x{q.reason:02x}\t{q.device}\t{q.topic}\t{len(q.payload)} bytes"
                          + (f"\t{q.payload.decode('utf-8', 'replace')}" if args.payload else ""))
            if not args.json:
                print(f"{spool.quarantine_depth} quarantined; {spool.depth} waiting in the spool", file=sys.stderr)
        elif args.action == "resend":
            print(f"moved {spool.resend(ids)} message(s) back to the spool; the gateway sends them when started",
                  file=sys.stderr)
        else:
            print(f"purged {spool.purge(ids)} message(s) from the quarantine", file=sys.stderr)
    except SpoolError as exc:
        print(f"gateway spool: {exc}", file=sys.stderr)
        return EXIT_FAIL
    finally:
        spool.close()
    return EXIT_OK


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="gateway", description="Telemetry data-minimisation gateway.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=_epilog(["gateway init site", "gateway check site/rules/*.toml",
                        "gateway run --config site/config.toml"],
                       "`gateway COMMAND --help` shows each command's arguments, examples and exit codes."),
    )
    p.add_argument("--version", action="version", version=f"gateway {_version()}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(name: str, help: str, examples: list[str], exits: str = EXITS_OFFLINE) -> argparse.ArgumentParser:
        return sub.add_parser(name, help=help, description=help[0].upper() + help[1:] + ".",
                              formatter_class=argparse.RawDescriptionHelpFormatter, epilog=_epilog(examples, exits))

    def keys_opts(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("--keys", metavar="FILE", help="key file (default: $GATEWAY_KEYS_FILE or $GATEWAY_KEYS)")
        sp.add_argument("--test-keys", action="store_true", help="use the public test key (as inline tests do)")

    def consent_opt(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("--consent", action="append", default=[], metavar="DEVICE:PURPOSE",
                        help="treat DEVICE as consenting to PURPOSE (repeatable)")

    sp = add("check", "validate policies and run their inline tests",
             ["gateway check rules/*.toml", "gateway check --trusted-key reviewer.pub rules/*.toml"],
             "exit codes: 0 all valid and all inline tests pass; 1 an inline test fails; 2 a policy is invalid "
             "(file:line: path: problem) or, with --trusted-key, not validly signed")
    sp.add_argument("policy", nargs="+", metavar="POLICY", help="policy TOML file(s)")
    sp.add_argument("--trusted-key", action="append", default=[], metavar="PUB",
                    help="a signer's public key (repeatable): refuse packs without a valid signature from one")
    sp.add_argument("--dump-code", action="store_true",
                    help="also print the Python generated for each policy's hot path (for debugging)")
    sp.set_defaults(func=cmd_check)

    sp = add("minimise", "minimise JSON lines from stdin",
             ["gateway minimise --policy rules/jimi-tracksolid.toml --topic tracksolid/358756091234567/location "
              "--keys keys.json < in.jsonl",
              'echo \'{"topic": "t/1", "payload": {...}}\' | gateway minimise --policy p.toml --test-keys'])
    sp.add_argument("--policy", action="append", required=True, metavar="FILE", help="policy file (repeat for several)")
    sp.add_argument("--topic", help="topic of every line (else lines are {\"topic\", \"payload\"})")
    consent_opt(sp)
    keys_opts(sp)
    sp.set_defaults(func=cmd_minimise)

    sp = add("diff", "what a new policy would change, over sample messages",
             ["gateway diff rules/jimi-tracksolid.toml candidate.toml --input tracksolid.jsonl",
              "python -m devices.simulate --system smartjac --dump s.jsonl --count 2000 && "
              "gateway diff rules/smartjac.toml new.toml --input s.jsonl --json"],
             "exit codes: 0 nothing changes; 1 something changes; 2 a policy or the input is invalid")
    sp.add_argument("old", metavar="OLD", help="the running policy file")
    sp.add_argument("new", metavar="NEW", help="the candidate policy file")
    sp.add_argument("--input", required=True, metavar="FILE", help='JSON lines {"topic": ..., "payload": {...}}')
    sp.add_argument("--json", action="store_true", help="one JSON object instead of the table")
    sp.add_argument("--examples", type=int, default=3, help="examples per change, minimised by each side (default 3)")
    consent_opt(sp)
    keys_opts(sp)
    sp.set_defaults(func=cmd_diff)

    sp = add("explain", "show what the policy does to one message from stdin, and why",
             ["gateway explain --policy rules/jimi-tracksolid.toml --topic tracksolid/358756091234567/location "
              "--test-keys < message.json"])
    sp.add_argument("--policy", action="append", required=True, metavar="FILE", help="policy file (repeat for several)")
    sp.add_argument("--topic", required=True, help="the message's topic (selects the policy)")
    sp.add_argument("--json", action="store_true", help="one JSON object instead of the table")
    consent_opt(sp)
    keys_opts(sp)
    sp.set_defaults(func=cmd_explain)

    sp = add("bench", "measure the hot path in-process",
             ["gateway bench --policy rules/jimi-tracksolid.toml --topic tracksolid/358756091234567/location "
              "--input messages.jsonl --seconds 3"])
    sp.add_argument("--policy", required=True, metavar="FILE", help="policy file")
    sp.add_argument("--topic", required=True, help="topic of every message")
    sp.add_argument("--input", required=True, metavar="FILE", help="JSON lines, one message payload per line")
    sp.add_argument("--seconds", type=float, default=3.0, help="how long to run (default 3)")
    sp.add_argument("--leak-guard", choices=("policy", "on", "off"), default="policy",
                    help="override the policy's leak guard (default: as the policy says)")
    sp.add_argument("--json", action="store_true", help="one JSON object instead of a sentence")
    sp.add_argument("--keys", metavar="FILE", help="key file (default: the public test key)")
    sp.set_defaults(func=cmd_bench)

    sp = add("keygen", "write a new key file (0600), or a policy-signing key pair",
             ["gateway keygen /etc/gateway/keys.json", "gateway keygen --rotate /etc/gateway/keys.json",
              "gateway keygen --retire k1 /etc/gateway/keys.json", "gateway keygen --signing /secure/reviewer.key"],
             "exit codes: 0 written; 2 the file exists (without --rotate) or cannot be read or written")
    sp.add_argument("path", nargs="?", metavar="PATH", help="key file to write")
    sp.add_argument("--signing", metavar="FILE",
                    help="instead: write an Ed25519 policy-signing key pair FILE, FILE.pub")
    sp.add_argument("--id", help="key id ([a-z0-9]{1,16}); default k1, or k<N> with --rotate")
    sp.add_argument("--rotate", action="store_true", help="add a new active key to an existing file")
    sp.add_argument("--retire", metavar="ID", help="remove key ID from the file (refused while it is active)")
    sp.set_defaults(func=cmd_keygen)

    sp = add("sign", "sign policy packs (writes POLICY.sig beside each)",
             ["gateway sign --key /secure/reviewer.key rules/*.toml"],
             "exit codes: 0 signed; 2 a pack is invalid or the key cannot be read")
    sp.add_argument("policy", nargs="+", metavar="POLICY", help="policy TOML file(s)")
    sp.add_argument("--key", required=True, metavar="FILE", help="Ed25519 private key from keygen --signing")
    sp.set_defaults(func=cmd_sign)

    sp = add("spool", "list, resend or purge the messages the cloud refused (the spool's quarantine)",
             ["gateway spool list --config site/config.toml",
              "gateway spool purge --config site/config.toml --id 3 --id 4",
              "gateway spool resend --config site/config.toml --all   # with the gateway stopped"],
             "exit codes: 0 done; 1 the spool is busy (resend while the gateway runs) or failed; "
             "2 bad config, no spool file, or no --id/--all")
    sp.add_argument("action", choices=("list", "resend", "purge"),
                    help="list the quarantined messages, resend them to the cloud, or purge them")
    sp.add_argument("--config", required=True, metavar="FILE", help="the gateway's config.toml")
    sp.add_argument("--worker", type=int, default=0, help="worker index (each worker has its own spool; default 0)")
    sp.add_argument("--id", type=int, action="append", default=[], metavar="ID",
                    help="a quarantined message (repeatable)")
    sp.add_argument("--all", action="store_true", help="resend/purge every quarantined message")
    sp.add_argument("--limit", type=int, default=1000, help="list at most this many (default 1000)")
    sp.add_argument("--payload", action="store_true", help="list: show the (minimised) payloads too")
    sp.add_argument("--json", action="store_true", help="list: one JSON object per line")
    sp.set_defaults(func=cmd_spool)

    sp = add("reveal", "decrypt enc.<kid>.<scope>.<domain>.<data> values (key holders only)",
             ["gateway reveal --keys keys.json enc.k1.AbC...", "gateway reveal --keys keys.json < values.txt"],
             "exit codes: 0 all revealed; 1 a value cannot be revealed; 2 the key file is invalid")
    sp.add_argument("value", nargs="*", metavar="VALUE", help="values (default: one per line on stdin)")
    keys_opts(sp)
    sp.set_defaults(func=cmd_reveal)

    sp = add("consent", "the consent issuer's key and signed records (docs/operations.md, Consent)",
             ["gateway consent keygen /secure/consent-issuer.key",
              "gateway consent grant --key /secure/consent-issuer.key 358756091234567 precise_location "
              "--expires-in 31536000",
              "gateway consent revoke --key /secure/consent-issuer.key 358756091234567 precise_location"],
             "exit codes: 0 done; 2 the key cannot be read or written")
    csub = sp.add_subparsers(dest="action", required=True, metavar="ACTION", help="keygen, grant or revoke")
    kp = csub.add_parser("keygen", help="write a new Ed25519 issuer key (0600); print its public key")
    kp.add_argument("path", metavar="PATH", help="private key file to write")
    kp.set_defaults(func=cmd_consent)
    for action in ("grant", "revoke"):
        gp = csub.add_parser(action, help=f"print a signed {action} record for consent/<device>/<purpose>")
        gp.add_argument("--key", required=True, metavar="FILE", help="the issuer's private key (consent keygen)")
        gp.add_argument("device", metavar="DEVICE", help="device id, as in the device's topics")
        gp.add_argument("purpose", metavar="PURPOSE", help="purpose the policy asks consent for")
        gp.add_argument("--issued-at", type=int, metavar="UNIX_S", help="default: now")
        if action == "grant":
            gp.add_argument("--expires-in", type=int, metavar="S", help="the grant lapses S seconds after issued-at")
        else:
            gp.set_defaults(expires_in=None)
        gp.set_defaults(func=cmd_consent)

    sp = add("deadletter", "open sealed dead letters (key holders only; docs/operations.md, Dead letters)",
             ["mosquitto_sub -u dead-letter-reader -P ... -t 'gateway/dead-letter/#' | gateway deadletter open "
              "--keys keys.json"],
             "exit codes: 0 all opened; 1 a line is not a dead letter or does not open with these keys; "
             "2 the key file is invalid")
    dsub = sp.add_subparsers(dest="action", required=True, metavar="ACTION", help="open")
    op = dsub.add_parser("open", help="read sealed dead letters, one per line on stdin; print each as a JSON line")
    op.add_argument("--keys", metavar="FILE", help="key file (default: $GATEWAY_KEYS_FILE or $GATEWAY_KEYS)")
    op.set_defaults(func=cmd_deadletter)

    sp = add("decode", "decode device frames, e.g. gateway decode gt06 HEX",
             ["gateway decode gt06 78780D01012345678901234500018CDD0D0A",
              "gateway decode jt808 7e0002000004304832546500b7ca7e"],
             "exit codes: 0 every frame decoded; 1 a frame is invalid")
    sp.add_argument("protocol", choices=("gt06", "jt808"), help="frame protocol")
    sp.add_argument("hex", nargs="+", metavar="HEX", help="frames as hex")
    sp.set_defaults(func=cmd_decode)

    sp = add("run", "run the gateway service (local broker -> minimise -> cloud)",
             ["gateway run --config /etc/gateway/config.toml", "gateway run --config config.toml --workers 2"],
             RUN_EXIT_CODES + "\nsignals: SIGTERM/SIGINT stop cleanly; SIGHUP reloads "
             "policies and keys (refused, and counted, if they fail `gateway check`)")
    sp.add_argument("--config", required=True, metavar="FILE", help="config.toml (see docs/configuration.md)")
    sp.add_argument("--workers", type=int, default=1, help="worker processes on a shared subscription (default 1)")
    sp.add_argument("--worker", type=int, default=None, help=argparse.SUPPRESS)  # set by the supervisor
    sp.add_argument("--metrics-listen", default=None, help=argparse.SUPPRESS)  # set by the supervisor
    sp.set_defaults(func=cmd_run)

    sp = add("validate", "run the start-up checks of `gateway run` without serving",
             ["gateway validate --config /etc/gateway/config.toml --connect"], VALIDATE_EXIT_CODES)
    sp.add_argument("--config", required=True, metavar="FILE", help="config.toml (see docs/configuration.md)")
    sp.add_argument("--connect", action="store_true", help="also connect to both brokers once (CONNECT, disconnect)")
    sp.set_defaults(func=cmd_validate)

    sp = add("demo", "live demo: brokers, simulated devices, gateway, what the cloud receives",
             ["gateway demo", "gateway demo --offline"],
             "exit codes: 0 done; 1 the live demo could not start (Mosquitto missing or a port taken)")
    sp.add_argument("--count", type=int, default=500, help="messages per system in the load run (default 500)")
    sp.add_argument("--offline", action="store_true", help="no brokers: the policies' samples through the engine")
    sp.set_defaults(func=cmd_demo)

    sp = add("init", "write a working site folder: config.toml, rules/ (the bundled packs), keys.json (0600)",
             ["gateway init /etc/gateway && gateway check /etc/gateway/rules/*.toml",
              "gateway init --systemd /etc/telemetry-gateway    # for deploy/systemd/telemetry-gateway.service"],
             "exit codes: 0 written; 1 the folder already has a config, key file or pack (nothing is overwritten), "
             "or cannot be written")
    sp.add_argument("folder", metavar="DIR", help="site folder (created if missing)")
    sp.add_argument("--systemd", action="store_true",
                    help="lay the config out for deploy/systemd: keys as a credential, spool in the "
                    "unit's state directory /var/lib/telemetry-gateway")
    sp.set_defaults(func=cmd_init)
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
