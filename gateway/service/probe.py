"""``gateway validate --connect``: one MQTT 5 CONNECT to a broker and a clean DISCONNECT.

The probe uses its own client id (``<client_id>-validate``, clean start, session
expiry 0): connecting with the gateway's own id would take over a running
gateway's persistent session, and a clean start would discard what waits in it.
"""

from __future__ import annotations

import asyncio
import ssl

import aiomqtt

from gateway.service.config import ConfigError, Endpoint

__all__ = ["probe"]


async def probe(ep: Endpoint, wait_s: float = 10.0) -> str:
    """Connect once; "" when the broker accepted, else why not (no secret in the text)."""
    try:
        user, password = ep.credentials()
        client = aiomqtt.Client(
            ep.host, ep.port, identifier=f"{ep.client_id[:55]}-validate", protocol=aiomqtt.ProtocolVersion.V5,
            clean_start=True, username=user, password=password, tls_context=ep.tls_context(),
            keepalive=ep.keepalive_s, timeout=wait_s,
        )
        async with asyncio.timeout(wait_s + 5):
            async with client:
                pass
    except ConfigError as exc:
        return str(exc)
    except aiomqtt.MqttCodeError as exc:
        return f"refused: {exc}"
    except ssl.SSLError as exc:
        return f"TLS: {exc.reason or exc.__class__.__name__}"
    except (aiomqtt.MqttError, OSError) as exc:
        return f"{exc.__class__.__name__}: {exc}"
    except TimeoutError:
        return f"no answer within {wait_s:.0f} s"
    return ""
