"""Every log line is one JSON object (docs/operations.md, Logs): uncaught exceptions in callbacks, tasks,
threads and the main thread, warnings, stdlib loggers and stray stderr writes become events with the
exception type and a location, never its text; lines of many processes never splice; the metrics HTTP
server is bounded and quiet."""

from __future__ import annotations

import json
import socket
import struct
import subprocess
import sys
import textwrap
import threading
import time
import urllib.request

from service_harness import ROOT, assert_json_lines, wait_until

from gateway.telemetry import MAX_LINE, Metrics, serve

CANARY = "CANARY-4111111111111111"

SCRIPT = textwrap.dedent(f"""
    import asyncio, gc, logging, sys, threading, warnings
    from gateway.telemetry import configure_logging, get_logger, loop_exception_handler, route_process_output

    configure_logging(json=True, level="info", worker=3)
    route_process_output()
    log = get_logger("gateway.test")

    def bad_callback(payload):
        raise ValueError("payload " + payload)

    async def bad_task(payload):
        raise KeyError(payload)

    async def main():
        loop = asyncio.get_running_loop()
        loop.set_exception_handler(loop_exception_handler)
        loop.call_soon(bad_callback, "{CANARY}")
        task = loop.create_task(bad_task("{CANARY}"), name="drain")
        await asyncio.sleep(0.05)
        del task
        gc.collect()
        await asyncio.sleep(0.05)

    asyncio.run(main())
    logging.getLogger("mqtt").error("Caught exception in on_message: %s", "{CANARY}")
    logging.getLogger("asyncio").error("Exception in callback f(b'{CANARY}')")
    warnings.warn("{CANARY}", RuntimeWarning)
    t = threading.Thread(target=bad_callback, args=("{CANARY}",), name="helper")
    t.start(); t.join()
    print("stray {CANARY}", file=sys.stderr)
    try:
        bad_callback("{CANARY}")
    except ValueError:
        log.error("handled", exc_info=True)
    log.info("long", note="{CANARY[:4]}" * 5000, items=list(range(3000)))
    configure_logging(json=True, level="info")  # as a SIGHUP reload does: still stderr, still worker 3
    log.info("reconfigured")
    bad_callback("{CANARY}")
""")


def test_every_error_path_of_a_process_is_one_json_event_without_its_text() -> None:
    r = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert r.returncode == 1  # the last, uncaught exception still ends the process
    assert CANARY not in r.stderr and r.stdout == ""
    events = assert_json_lines(r.stderr, "stderr")
    assert all(e["worker"] == 3 for e in events) and len({e["pid"] for e in events}) == 1
    by = {e["event"]: e for e in events}
    callback = next(e for e in events if e["event"] == "loop_exception" and e.get("callback"))
    assert callback["error"] == "ValueError" and callback["callback"] == "bad_callback"
    assert callback["location"].startswith("<string>:")  # the script is "-c"
    task = next(e for e in events if e["event"] == "loop_exception" and e.get("task"))
    assert task["error"] == "KeyError" and task["task"] == "drain"
    assert by["Caught exception in on_message"]["logger"] == "mqtt"
    assert by["Exception in callback f"]["logger"] == "asyncio"
    assert by["python_warning"]["category"] == "RuntimeWarning"
    thread = next(e for e in events if e["event"] == "uncaught_exception" and e.get("thread") == "helper")
    assert thread["error"] == "ValueError" and thread["frames"][0].endswith("bad_callback")
    assert by["stray_output"]["chars"] == len(f"stray {CANARY}\n")
    assert by["handled"]["error"] == "ValueError" and "location" in by["handled"]
    assert by["long"]["truncated"] is True
    assert by["reconfigured"]["worker"] == 3
    last = events[-1]
    assert (last["event"], last["error"], last["thread"]) == ("uncaught_exception", "ValueError", "main")
    assert all(len(line.encode()) < MAX_LINE for line in r.stderr.splitlines())


WRITER = textwrap.dedent("""
    import sys
    from gateway.telemetry import configure_logging, get_logger
    configure_logging(json=True, worker=int(sys.argv[1]))
    log = get_logger("gateway.test")
    for i in range(400):
        log.info("burst", i=i, pad="x" * (i * 9 % 3900))
""")


def test_lines_of_several_processes_on_one_pipe_never_splice() -> None:
    """Four writers on one pipe, lines up to PIPE_BUF: every line whole."""
    read, write = __import__("os").pipe()
    procs = [subprocess.Popen([sys.executable, "-c", WRITER, str(i)], stderr=write, cwd=ROOT) for i in range(4)]
    __import__("os").close(write)
    chunks = []
    with open(read, "rb") as pipe:
        while data := pipe.read(65536):
            chunks.append(data)
    for p in procs:
        assert p.wait(60) == 0
    events = assert_json_lines(b"".join(chunks).decode(), "pipe")
    assert len(events) == 1600
    assert sorted({e["worker"] for e in events}) == [0, 1, 2, 3]


# -- the metrics HTTP server -----------------------------------------------------------------


def _get(port: int, path: str = "/healthz") -> int:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=2) as r:
            return r.status
    except OSError:
        return 0


def _refused(metrics: Metrics, reason: str) -> float:
    return metrics.registry.get_sample_value("gateway_http_refused_total", {"reason": reason}) or 0.0


def test_http_connections_are_capped_and_idle_ones_time_out(capfd) -> None:
    metrics = Metrics()
    threads_before = threading.active_count()
    server = serve(metrics, "127.0.0.1", 0, max_connections=4, timeout_s=0.5, deadline_s=1.5)
    port = server.server_address[1]
    idle = []
    try:
        for _ in range(30):  # connect and say nothing
            idle.append(socket.create_connection(("127.0.0.1", port)))
        wait_until(lambda: _refused(metrics, "limit") >= 1, 10, "connections over the cap refused")
        assert threading.active_count() <= threads_before + 1 + 4  # the serving thread and 4 handlers
        wait_until(lambda: _get(port) == 200, 10, "the server answers again once idle connections timed out")
        # a client trickling a header byte at a time is cut at the deadline
        slow = socket.create_connection(("127.0.0.1", port))
        slow.sendall(b"GET /metrics HTTP/1.1\r\n")
        t0 = time.monotonic()
        closed = False
        while time.monotonic() - t0 < 6:
            try:
                slow.sendall(b"X")
                slow.settimeout(0.2)
                if slow.recv(1024) == b"":
                    closed = True
                    break
            except TimeoutError:
                continue
            except OSError:
                closed = True
                break
        slow.close()
        assert closed and time.monotonic() - t0 < 4
        assert _refused(metrics, "timeout") >= 1
    finally:
        for s in idle:
            s.close()
        server.shutdown()
    err = capfd.readouterr().err
    assert "Traceback" not in err and "127.0.0.1', " not in err


def test_http_errors_are_json_events_without_the_peer(capfd) -> None:
    from gateway.telemetry import configure_logging

    configure_logging(json=True)
    metrics = Metrics()
    server = serve(metrics, "127.0.0.1", 0)
    port = server.server_address[1]
    try:
        for _ in range(30):  # ask, then reset the connection before the answer is read
            s = socket.create_connection(("127.0.0.1", port))
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            s.sendall(b"GET /metrics HTTP/1.0\r\n\r\n")
            s.close()
        wait_until(lambda: _get(port) == 200, 10, "still serving")
    finally:
        server.shutdown()
        __import__("structlog").reset_defaults()
    err = capfd.readouterr().err
    assert "Traceback" not in err and "Exception occurred" not in err and "127.0.0.1'," not in err
    for event in assert_json_lines(err, "stderr"):
        assert "peer" not in json.dumps(event) and "client_address" not in event
