"""The baseline for benchmarks/end_to_end.py: a bare aiomqtt relay, written as its docs suggest.

Subscribe on the site broker, republish every message to the cloud broker, nothing else:
no minimisation, automatic acknowledgements (paho acks on receipt, so it is not
at-least-once: a publish that times out is a lost message), publishes awaited
concurrently in a bounded window so QoS 1 is not round-trip bound, client defaults
otherwise. Persistent session, so the benchmark can queue a backlog for it.

    python benchmarks/relay.py LOCAL_PORT CLOUD_PORT QOS CLIENT_ID WORKERS
"""

from __future__ import annotations

import asyncio
import signal
import sys

import aiomqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

WINDOW = 256


async def main(local_port: int, cloud_port: int, qos: int, client_id: str, workers: int) -> None:
    props = Properties(PacketTypes.CONNECT)
    props.SessionExpiryInterval = 3600
    topic = "tracksolid/#" if workers == 1 else "$share/bench-relay/tracksolid/#"
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    async with aiomqtt.Client("127.0.0.1", cloud_port, identifier=f"{client_id}-up",
                              protocol=aiomqtt.ProtocolVersion.V5) as cloud, \
            aiomqtt.Client("127.0.0.1", local_port, identifier=client_id, properties=props,
                           protocol=aiomqtt.ProtocolVersion.V5, clean_start=False) as local:
        cloud.pending_calls_threshold = WINDOW + 16
        await local.subscribe(topic, qos=qos)
        pending: set[asyncio.Task] = set()

        async def relay() -> None:
            nonlocal pending
            async for message in local.messages:
                pending.add(asyncio.create_task(cloud.publish(message.topic.value, message.payload, qos=qos)))
                if len(pending) >= WINDOW:
                    _, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)

        task = asyncio.create_task(relay())
        await stop.wait()
        task.cancel()


if __name__ == "__main__":
    local_port, cloud_port, qos, client_id, workers = sys.argv[1:6]
    asyncio.run(main(int(local_port), int(cloud_port), int(qos), client_id, int(workers)))
