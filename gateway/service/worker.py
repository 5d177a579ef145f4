"""One gateway worker: local broker in, engine, uplink out (``gateway run``).

Each message is handled synchronously in the local client's callback, on the
event loop thread: route, minimise, count, then hand the minimised bytes to the
uplink together with the PUBACK that the local broker is owed. Nothing is
acknowledged before it is safe (see uplink.py), and the local session is
persistent (clean start off, session expiry), so whatever the gateway has not
acknowledged waits at the local broker across restarts and is redelivered.

Signals: SIGTERM/SIGINT stop taking messages, let in-flight ones finish (or
spool them) and exit 0; SIGHUP reloads policies and keys, refusing a set that
fails ``gateway check`` and keeping the old one.
"""

from __future__ import annotations

import asyncio
import gc
import signal
import time
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any

import aiomqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.subscribeoptions import SubscribeOptions

from gateway.ingest.gt06 import listener as gt06_listener
from gateway.ingest.jt808 import listener as jt808_listener
from gateway.keys import KeyFileError, Keyring
from gateway.ops.base import BoundedCache
from gateway.pipeline import Engine, Forward, Reject
from gateway.policy import signing
from gateway.policy.check import run_tests
from gateway.policy.compile import Plan
from gateway.policy.load import PolicyError, Source, load
from gateway.service.acks import acker, enable_manual_acks
from gateway.service.client import Client
from gateway.service.config import Config, ConfigError, load_config, restart_keys
from gateway.service.consent import Consents
from gateway.service.consent_store import WatermarkStore
from gateway.service.deadletter import Sealer, check_prefix
from gateway.service.sessions import Sweeper, local_ids, read_record, record_path, write_record
from gateway.service.shadow import Shadow, ShadowMetrics
from gateway.service.uplink import (
    ANY_SESSION,
    Backoff,
    Delivery,
    Provenance,
    Session,
    Uplink,
    describe,
    provenance,
    wait_first,
)
from gateway.spool import Spool
from gateway.telemetry import Metrics, _package_version, configure_logging, get_logger, serve

__all__ = ["Worker", "build_engine"]

log = get_logger("gateway.worker")
OVERLOAD_FACTOR = 10  # QoS 0 input is shed (counted) beyond this many times the cloud window


class PolicySetError(Exception):
    """A policy set that must not be used: invalid, or failing its inline tests."""


def build_engines(cfg: Config) -> tuple[Engine, Engine | None]:
    """Load keys and policies, run every policy's inline tests, compile the engine (and the shadow packs').

    Exactly what ``gateway check`` does, so a policy that fails the check never
    goes live, neither at start nor on a reload; shadow packs are held to the same.
    """
    keyring = Keyring.from_file(cfg.keys_file) if cfg.keys_file else Keyring.from_env()
    trusted = signing.trusted(cfg.trusted_policy_keys) if cfg.trusted_policy_keys else None
    active = Engine(_checked(cfg.policies, trusted), keyring)
    shadow = Engine(_checked(cfg.shadow_policies, trusted), keyring) if cfg.shadow_policies else None
    _check_dead_letter(cfg, active)
    return active, shadow


def _check_dead_letter(cfg: Config, engine: Engine) -> None:
    """A ConfigError if the gateway would consume its own dead letters (a policy's or the consent topic)."""
    if not cfg.dead_letter:
        return
    filters = [(f"policy {plan.name!r}", f.subscription) for plan in engine.plans for f in plan.filters]
    if cfg.consent.topic:
        filters.append(("consent.topic", Consents(cfg.consent.topic).subscription))
    problem = check_prefix(cfg.dead_letter, filters)
    if problem:
        raise ConfigError(problem)


def build_engine(cfg: Config) -> Engine:
    return build_engines(cfg)[0]


def _checked(paths: list[str], trusted: dict[str, Any] | None) -> list[Source]:
    sources = [load(p, trusted) for p in paths]
    failed = []
    for source in sources:
        _, failures = run_tests(source)
        failed += [f"{source.file}: {f}" for f in failures]
    if failed:
        raise PolicySetError(f"{len(failed)} inline test(s) fail: " + "; ".join(failed[:3]))
    return sources


class Worker:
    def __init__(self, cfg: Config, index: int = 0, workers: int = 1) -> None:
        self.cfg = cfg
        self.index = index
        self.workers = workers
        suffix = f"-{index}" if workers > 1 else ""
        self.local_id = cfg.local.client_id + suffix
        self.cloud_id = cfg.cloud.client_id + suffix
        self.metrics = Metrics()
        self.engine: Engine | None = None
        self.shadow: Shadow | None = None
        self._shadow_metrics: ShadowMetrics | None = None
        self.consents: Consents | None = None  # built in run(), with its watermark store next to the spool
        self._consent_store: WatermarkStore | None = None
        self._store_flush: asyncio.TimerHandle | None = None
        self.local: Client | None = None
        self.session = Session()  # the current site connection's: acknowledgements are valid on it only
        self.session.end()
        self._ack: Any = None
        self._stopping = False
        self._stop = asyncio.Event()
        self._prov: dict[int, Provenance] = {}
        # (plan, previous pseudonym) -> provenance, during a key transition
        self._prev_prov: BoundedCache = BoundedCache(4096)
        self._transition_until = 0.0
        self._subscribed: set[str] = set()
        self._reject_logged: set[tuple[str, str]] = set()
        self._consent_logged: set[str] = set()
        self._sealer: Sealer | None = None
        self._conn: Client | None = None  # the current local connection, from before its CONNACK
        self._trackers: Any = None  # the GT06 listener (worker 0, when configured)
        self._terminals: Any = None  # the JT/T 808 listener (worker 0, when configured)
        self.uplink: Uplink | None = None

    # -- lifecycle -------------------------------------------------------------------------

    async def run(self) -> int:
        cfg = self.cfg
        self.engine, shadow = build_engines(cfg)
        self._sealer = _dead_letters(cfg, self.engine)
        self._set_shadow(shadow)
        self.metrics.register_engine(self.engine)
        spool_path = cfg.spool.path if self.index == 0 else _indexed(cfg.spool.path, self.index)
        Path(spool_path).parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        if cfg.consent.topic:
            self._consent_store = WatermarkStore(spool_path + ".consent.db", self.engine.keyring,
                                                 2 * cfg.consent.max_entries)
        self.consents = _consents(cfg, self._consent_store)
        spool = Spool(spool_path, cfg.spool.max_bytes)
        self.uplink = Uplink(cfg.cloud, self.cloud_id, spool, self.metrics, cfg.reconnect)
        self.metrics.config_reload_success.set(1)
        self.metrics.config_reload_time.set(time.time())
        self.metrics.watch(
            lambda: self.uplink.backlog if self.uplink else 0, partial(_oldest, spool), cfg.spool.max_bytes
        )
        http = None
        address = cfg.metrics.address()
        if address is not None:
            http = serve(self.metrics, address[0], address[1], ready=self.ready, detail=self.ready_detail)
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.stop)
        loop.add_signal_handler(signal.SIGHUP, lambda: loop.create_task(self.reload()))
        settle_heap()
        log.info(
            "gateway_started", worker=self.index, version=_package_version(), spool=spool_path,
            spool_depth=spool.depth, policies=[p.name for p in self.engine.plans],
            local=cfg.local.url, cloud=cfg.cloud.url, key_id=self.engine.keyring.active,
        )
        up = asyncio.create_task(self.uplink.run(), name="uplink")
        # The cloud first: a backlog waiting at the local broker then goes straight up
        # instead of through the spool. Not forever: an absent cloud is what the spool is for.
        await wait_first(self.uplink.first_attempt.wait(), self._stop.wait(), timeout=15)
        down = asyncio.create_task(self._local_loop(), name="local")
        sweep = asyncio.create_task(self._sweep_stale_sessions(), name="sweep") if self.index == 0 else None
        trackers = self._trackers = None
        terminals = self._terminals = None
        try:
            if cfg.ingest.gt06.listen and self.index == 0:
                trackers = self._trackers = await self._start_gt06()
            if cfg.ingest.jt808.listen and self.index == 0:
                terminals = self._terminals = await self._start_jt808()
            await self._stop.wait()
        finally:
            if trackers is not None:  # first: an unacknowledged frame is resent by the tracker
                await gt06_listener.stop(trackers)
            if terminals is not None:
                await jt808_listener.stop(terminals)
            if sweep is not None:  # what it has not acknowledged stays in the old session, swept next time
                sweep.cancel()
                await asyncio.gather(sweep, return_exceptions=True)
            await self._shutdown(down, up)
            spool.close()
            if self._consent_store is not None:
                self._consent_store.close()
            if http is not None:
                http.shutdown()
        log.info("gateway_stopped", worker=self.index)
        return 0

    def stop(self) -> None:
        if not self._stopping:
            log.info("gateway_stopping", worker=self.index)
        self._stopping = True
        self._stop.set()

    async def _shutdown(self, down: asyncio.Task, up: asyncio.Task) -> None:
        """Stop taking messages, finish or spool the in-flight ones, flush acks, disconnect."""
        self._stopping = True  # _on_message now ignores new messages: unacked, they stay at the broker
        assert self.uplink is not None
        await self.uplink.close(self.cfg.shutdown_timeout_s)
        # PUBACKs just queued by close() go out before the DISCONNECT that ends _local_loop.
        down.cancel()
        await asyncio.gather(down, return_exceptions=True)
        await asyncio.wait_for(asyncio.gather(up, return_exceptions=True), timeout=15)

    def ready(self) -> bool:
        """Ready: the local side is connected, the spool can write, and the cloud is connected or the spool accepts."""
        up = self.uplink
        return (
            self.local is not None
            and not self.local.is_disconnected
            and up is not None
            and up.spool_writable
            and (up.connected or up.accepting)
        )

    def ready_detail(self) -> str:
        """/readyz body lines: a spool that cannot write, quarantined messages (see docs/operations.md)."""
        return self.uplink.readiness()[1] if self.uplink is not None else ""

    # -- GT06 trackers over TCP -------------------------------------------------------------

    async def _start_gt06(self) -> Any:
        g = self.cfg.ingest.gt06
        limits = g.limits()
        counters = gt06_listener.Counters()
        self.metrics.register_gt06(counters)
        host, port = g.address()
        server = await gt06_listener.serve(host, port, self._on_tracker_message, limits, counters)
        self.gt06_port = server.sockets[0].getsockname()[1]
        return server

    async def _start_jt808(self) -> Any:
        j = self.cfg.ingest.jt808
        counters = jt808_listener.Counters()
        self.metrics.register_ingest("jt808", "JT/T 808 listener", "terminal", counters)
        host, port = j.address()
        assert self.engine is not None
        auth_key = self.engine.keyring.derive("jt808|authentication-code")  # the same on every worker and host
        server = await jt808_listener.serve(host, port, self._on_tracker_message, auth_key, j.limits(), counters)
        self.jt808_port = server.sockets[0].getsockname()[1]
        return server

    async def _on_tracker_message(self, topic: str, payload: bytes) -> None:
        """A decoded GT06 frame: same engine and uplink as MQTT; the tracker's ACK waits until it is safe."""
        received = time.monotonic()
        t0 = time.perf_counter()
        result = self._process(topic, payload)
        self.metrics.observe(result, time.perf_counter() - t0)
        if self.shadow is not None:
            self.shadow.observe(topic, payload, result, time.time(), self._consent_table())
        if not isinstance(result, Forward):
            self._rejected(result, topic, payload)
            return  # acknowledged to the tracker: resending would not change the verdict
        safe = asyncio.get_running_loop().create_future()
        self._forward(result, partial(safe.set_result, None), ANY_SESSION, received, topic)
        await safe

    # -- local side ------------------------------------------------------------------------

    async def _local_loop(self) -> None:
        backoff = Backoff(self.cfg.reconnect)
        connected_once = False
        while True:
            try:
                client = self._local_client()
                # Before connecting: with a persistent session the broker sends the queued
                # backlog straight after CONNACK, inside __aenter__, and each of those
                # messages needs this connection's acker and session.
                self.session.end()
                self.session = session = Session()
                assert self.uplink is not None
                self._ack = acker(client)
                self._conn = client  # dead letters of that backlog go out on it too
                self.uplink.pressure = client.pause_reading  # backpressure: see Uplink._check_pressure
                async with client:
                    self.local = client
                    self.metrics.connected.labels("local").set(1)
                    if connected_once:
                        self.metrics.reconnects.labels("local").inc()
                    connected_once = True
                    backoff.reset()
                    client.pause_reading(self.uplink.paused)  # as it stands after an earlier connection
                    await self._subscribe(client)
                    log.info("local_connected", host=self.cfg.local.host, port=self.cfg.local.port,
                             subscriptions=len(self._subscribed))
                    try:
                        await client.wait_disconnected()
                    finally:
                        session.end()  # what is safe from now on is redelivered: no stale PUBACK
                        self.local = None
                        self.metrics.connected.labels("local").set(0)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self.session.end()
                self.local = None
                self.metrics.connected.labels("local").set(0)
                log.warning("local_disconnected", error=describe(exc))
            await asyncio.sleep(backoff.next_delay())

    async def _sweep_stale_sessions(self) -> None:
        """Worker 0: take what waits in the sessions of local client ids no longer in use, then end them."""
        ep = self.cfg.local
        path, broker = record_path(self.cfg.spool.path), f"{ep.host}:{ep.port}"
        current = local_ids(ep.client_id, self.workers)
        filters = self._filters()
        filters |= {f.split("/", 2)[2] if f.startswith("$share/") else f for f in filters}  # with or without a group
        rec = read_record(path, broker)
        stale = [i for i in rec.ids if i not in current]
        old_filters = set(rec.filters) if stale else set()
        if not self._record_sessions(path, broker, current + stale, filters | old_filters) or not stale:
            return
        sweeper = Sweeper(ep, self._take, lambda: filters | old_filters)
        backoff = Backoff(self.cfg.reconnect)
        while stale:
            client_id = stale[0]
            log.info("session_sweep_started", client_id=client_id, reason="client id no longer in use")
            try:
                taken = await sweeper.sweep(client_id)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self.metrics.session_sweeps.labels("failed").inc()
                log.warning("session_sweep_failed", client_id=client_id, error=describe(exc),
                            action="retrying; the session keeps its messages meanwhile")
                await asyncio.sleep(backoff.next_delay())
                continue
            backoff.reset()
            stale.pop(0)
            self._record_sessions(path, broker, current + stale, filters | (old_filters if stale else set()))
            self.metrics.session_sweeps.labels("ok").inc()
            log.info("session_swept", client_id=client_id, messages=taken)

    def _local_client(self) -> Client:
        ep = self.cfg.local
        user, password = ep.credentials()
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = ep.session_expiry_s
        props.ReceiveMaximum = ep.max_inflight
        client = Client(
            ep.host,
            ep.port,
            identifier=self.local_id,
            protocol=aiomqtt.ProtocolVersion.V5,
            clean_start=False,  # persistent session: what we have not acked waits for us
            properties=props,
            keepalive=ep.keepalive_s,
            username=user,
            password=password,
            tls_context=ep.tls_context(),
            max_inflight_messages=ep.max_inflight,
            on_message=self._on_message,
            timeout=10,
        )
        enable_manual_acks(client)  # before connecting: queued messages arrive right after CONNACK
        return client

    def _filters(self) -> set[str]:
        assert self.engine is not None
        subs = {f.subscription for plan in self.engine.plans for f in plan.filters}
        if self.cfg.group:
            subs = {f"$share/{self.cfg.group}/{s}" for s in subs}
        if self.consents is not None:
            subs.add(self.consents.subscription)  # never shared: every worker needs every record
        return subs

    async def _subscribe(self, client: Client) -> None:
        wanted = self._filters()
        await client.subscribe([(s, SubscribeOptions(qos=1)) for s in sorted(wanted)])
        self._subscribed = wanted

    def _record_sessions(self, path: Path, broker: str, ids: list[str], filters: set[str]) -> bool:
        """Write the session record; on failure (a full or read-only disk) say so and do not sweep:
        a session swept but still on record would only be swept again, one not on record never."""
        try:
            write_record(path, broker, ids, filters)
            return True
        except OSError as exc:
            self.metrics.session_sweeps.labels("failed").inc()
            log.error("session_record_unwritable", file=str(path), error=exc.strerror or exc.__class__.__name__,
                      action="old sessions are not swept until it can be written")
            return False

    async def _resubscribe(self, consent_again: bool = False) -> None:
        """Subscribe to what the reloaded config names, drop the rest. ``consent_again``:
        the consent table was rebuilt, so subscribe to its topic again for the retained records."""
        client = self.local
        if client is None:
            return  # the next connection subscribes to the new set
        wanted = self._filters()
        gone, new = self._subscribed - wanted, wanted - self._subscribed
        if consent_again and self.consents is not None:
            new.add(self.consents.subscription)
        if new:
            await client.subscribe([(s, SubscribeOptions(qos=1)) for s in sorted(new)])
        if gone:
            await client.unsubscribe(sorted(gone))
        self._subscribed = wanted

    # -- the per-message path --------------------------------------------------------------

    def _on_message(self, topic: str, payload: bytes, qos: int, mid: int, dup: bool) -> None:
        self._take(topic, payload, qos, mid, dup, self._ack, self.session)

    def _take(self, topic: str, payload: bytes, qos: int, mid: int, dup: bool, acker: Callable[[int], None],
              session: Session = ANY_SESSION) -> None:
        """One message from a local session (``acker`` acknowledges it there, while ``session`` is alive)."""
        if self._stopping:
            return  # not acknowledged: the broker keeps it for the next session
        ack = partial(acker, mid) if qos else None
        consents = self.consents
        if consents is not None and consents.matches(topic):
            verdict = consents.update(topic, payload)
            self.metrics.consent_updates.labels(verdict).inc()
            self.metrics.consent_entries.set(len(consents))
            self._schedule_store_flush()
            if verdict in ("unauthenticated", "full") and verdict not in self._consent_logged:
                self._consent_logged.add(verdict)  # once each: the counter has the rest
                log.warning("consent_ignored", reason=verdict, entries=len(consents),
                            note="further records ignored for this reason are only counted")
            if ack:
                ack()
            return
        if dup:
            self.metrics.redelivered.inc()
        uplink = self.uplink
        assert uplink is not None
        if not qos and uplink.overloaded(OVERLOAD_FACTOR):
            self.metrics.dropped.labels("none", "overload").inc()  # QoS 0: at most once, by the sender's choice
            return
        received = time.monotonic()
        t0 = time.perf_counter()
        result = self._process(topic, payload)
        self.metrics.observe(result, time.perf_counter() - t0)
        if self.shadow is not None:
            self.shadow.observe(topic, payload, result, time.time(), self._consent_table())
        if isinstance(result, Forward):
            self._forward(result, ack, session, received, topic)
            return
        self._rejected(result, topic, payload)
        if ack:
            ack()

    def _schedule_store_flush(self) -> None:
        """Consent watermarks reach the disk within half a second, in one transaction (a burst of
        retained records after a (re)subscribe is thousands of updates)."""
        store = self._consent_store
        if store is not None and store.dirty and self._store_flush is None:
            self._store_flush = asyncio.get_running_loop().call_later(0.5, self._flush_store)

    def _flush_store(self) -> None:
        self._store_flush = None
        if self._consent_store is not None:
            try:
                self._consent_store.flush()
            except Exception as exc:  # a full disk must not stop consent: the marks stay in memory
                log.warning("consent_watermarks_unsaved", error=exc.__class__.__name__, action="retrying")
                self._store_flush = asyncio.get_running_loop().call_later(5, self._flush_store)

    def _forward(
        self, result: Forward, ack: Callable[[], None] | None, session: Session, received: float, topic: str = ""
    ) -> None:
        """Hand a minimised message to the uplink with its policy's provenance (built once per plan);
        its acknowledgement also times the delivery (``received``: ``time.monotonic()`` at receipt).
        During a key transition the provenance also names the device's previous-key pseudonym."""
        plan = result.plan
        prov = self._prov.get(id(plan))
        if prov is None:
            prov = self._prov[id(plan)] = _provenance(plan)
        if self._transition_until and topic and time.time() < self._transition_until:
            assert self.engine is not None
            previous = self.engine.previous_device(topic)
            if previous is not None:
                key = (id(plan), previous)
                prov = self._prev_prov.get(key) or self._prev_prov.put(key, _provenance(plan, previous))
        safe = self.metrics.on_safe(plan.name, received, ack)
        qos = plan.policy.route.qos
        assert self.uplink is not None
        self.uplink.submit(Delivery(plan.name, result.topic, result.payload, qos, prov, safe, session))

    def _set_transition(self, engine: Engine) -> None:
        """After a key rotation, for ``[keys] transition_s``: forwarded messages also carry the device's
        pseudonym under the previous key (``previous_device``), so the cloud can link old and new once."""
        ring, span = engine.keyring, self.cfg.keys.transition_s
        self._transition_until = ring.rotated_at + span if ring.in_transition(time.time(), span) else 0.0
        self._prev_prov.clear()
        if self._transition_until:
            log.info("key_transition", key_id=ring.active, previous_key_id=ring.previous,
                     until=datetime.fromtimestamp(self._transition_until, UTC).isoformat(timespec="seconds"))

    def _consent_table(self) -> Mapping[str, frozenset[str]]:
        return self.consents.table if self.consents is not None else {}

    def _set_shadow(self, engine: Engine | None) -> None:
        if engine is None:
            self.shadow = None
            return
        if self._shadow_metrics is None:
            self._shadow_metrics = ShadowMetrics(self.metrics.registry)
        self.shadow = Shadow(engine, self._shadow_metrics)
        log.info("shadow_policies", policies=self.shadow.policies,
                 note="evaluated beside the active ones, never forwarded")

    def _process(self, topic: str, payload: bytes) -> Forward | Reject:
        """The engine, fenced: a bug must cost one message (counted), not a reconnect loop
        in which the broker redelivers the same message for ever."""
        consents = self.consents
        now = time.time()
        if consents is not None and consents.next_expiry <= now:
            self.metrics.consent_updates.labels("expired").inc(consents.expire(now))
            self.metrics.consent_entries.set(len(consents))
        try:
            return self.engine.process(topic, payload, now, consents.table if consents else {})  # type: ignore[union-attr]
        except Exception as exc:
            # The exception's text could quote the payload: only its class is logged.
            log.error("engine_error", error=exc.__class__.__name__, action="message dropped and counted")
            return Reject("internal_error")

    def _rejected(self, result: Reject, topic: str, payload: bytes) -> None:
        name = result.plan.name if result.plan is not None else "none"
        if (name, result.reason) not in self._reject_logged:  # first of each kind; the rest are counted
            self._reject_logged.add((name, result.reason))
            log.warning("message_rejected", policy=name, reason=result.reason, rule=result.rule,
                        note="further rejections of this kind are only counted")
        dl, sealer = self.cfg.dead_letter, self._sealer
        if dl and sealer is not None:
            client = self._conn
            props = Properties(PacketTypes.PUBLISH)
            props.UserProperty = [("reason", result.reason), ("policy", name), ("rule", result.rule)]
            # Sealed for the key holder: the raw payload and topic are personal data.
            letter = sealer.seal(topic, payload, result.reason, name, result.rule)
            if client is not None and client.publish_nowait(f"{dl}/{result.reason}", letter, 1, props) is not None:
                self.metrics.dead_lettered.inc()
            else:
                self.metrics.dead_letters_unsent.inc()  # the local broker is away; the rejection is counted

    # -- reload ----------------------------------------------------------------------------

    async def reload(self) -> None:
        """SIGHUP: re-read config.toml, then the policies and keys it names; apply all of it or nothing.

        What is bound to a connection, file or socket opened at start (see LIVE_KEYS in
        config.py) is refused, naming the key, and the running config stays in force.
        """
        blocked: list[str] = []
        try:
            new = load_config(self.cfg.path) if self.cfg.path else self.cfg
            blocked = restart_keys(self.cfg, new)
            if blocked:
                raise ConfigError(f"{', '.join(blocked)}: cannot change while running; restart to apply")
            engine, shadow = build_engines(new)
            consents = self.consents if new.consent == self.cfg.consent else _consents(new, self._consent_store)
            sealer = _dead_letters(new, engine)
            limits = new.ingest.gt06.limits() if self._trackers is not None else None
            jt808_limits = new.ingest.jt808.limits() if self._terminals is not None else None
        except (ConfigError, PolicyError, KeyFileError, PolicySetError, OSError, ValueError) as exc:
            self.metrics.policy_reloads.labels("refused").inc()
            self.metrics.config_reload_success.set(0)
            event = "config_reload_refused" if blocked or isinstance(exc, ConfigError) else "policy_reload_refused"
            log.error(event, error=str(exc), keys=blocked, action="keeping the running config")
            return
        old, self.cfg = self.cfg, new
        self.engine = engine
        self._sealer = sealer
        self._set_shadow(shadow)
        self._prov.clear()
        self._set_transition(engine)
        self.metrics.register_engine(engine)
        consents_changed = consents is not self.consents
        self.consents = consents
        if self.uplink is not None:
            self.uplink.reconnect = new.reconnect
        if limits is not None:
            gt06_listener.update_limits(self._trackers, limits)
        if jt808_limits is not None:
            jt808_listener.update_limits(self._terminals, jt808_limits)
        if new.log != old.log:
            configure_logging(json={"auto": None, "json": True, "console": False}[new.log.format], level=new.log.level)
        self.metrics.policy_reloads.labels("ok").inc()
        self.metrics.config_reload_success.set(1)
        self.metrics.config_reload_time.set(time.time())
        log.info("policy_reloaded", policies=[f"{p.name}@{p.policy.policy.version}" for p in engine.plans],
                 key_id=engine.keyring.active)
        settle_heap()
        try:
            await self._resubscribe(consents_changed)
        except aiomqtt.MqttError as exc:
            log.warning("resubscribe_failed", error=describe(exc), action="the next connection subscribes")


def settle_heap() -> None:
    """Freeze what lives as long as the process (modules, compiled policies, keys, metrics).

    Why: a full garbage collection walks every tracked object; with the start-up heap
    that took 30-50 ms on the message path each time, a p99 latency spike
    (benchmarks/RESULTS.md, issue 12). Frozen objects are skipped. Called at start and
    after a reload, which unfreezes first so that the replaced engine can be freed."""
    gc.unfreeze()
    gc.collect()
    gc.freeze()


def _dead_letters(cfg: Config, engine: Engine) -> Sealer | None:
    """The sealer for dead letters, or None when off (the prefix was checked by build_engines)."""
    return Sealer(engine.keyring) if cfg.dead_letter else None


def _consents(cfg: Config, store: WatermarkStore | None = None) -> Consents | None:
    c = cfg.consent
    if not c.topic:
        return None
    keys = c.verify_keys()
    if not keys:
        log.warning("consent_without_keys", action="every consent record is ignored until consent.public_keys is set")
    return Consents(c.topic, keys, c.max_entries, c.max_clock_skew_s, store)


def _provenance(plan: Plan, previous_device: str = "") -> Provenance:
    meta = plan.policy.policy
    user = [
        ("policy", meta.name),
        ("policy_version", meta.version),
        ("policy_sha256", plan.source.sha256),
        ("key_id", plan.key_id),
    ]
    if meta.retention:
        user.append(("retention", meta.retention))
    if previous_device:  # key transition: the cloud may link the device's old and new pseudonym once
        user.append(("previous_device", previous_device))
    return provenance(user, plan.policy.route.expiry_s)


def _oldest(spool: Spool) -> float | None:
    """When the oldest spooled message was written, for the age gauge (None: empty or closed)."""
    try:
        entries = spool.peek(1)
    except Exception:  # closed at shutdown while a scrape runs
        return None
    return entries[0].created if entries else None


def _indexed(path: str, index: int) -> str:
    """spool.db -> spool-1.db: each worker owns its spool."""
    stem, dot, ext = path.rpartition(".")
    return f"{stem}-{index}.{ext}" if dot and "/" not in ext else f"{path}-{index}"
