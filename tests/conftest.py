"""Shared fixtures: real Mosquitto brokers.

A missing broker fails the test instead of skipping it, so a machine without
Mosquitto cannot silently pass the delivery-guarantee tests.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from brokers import Mosquitto, MosquittoMissing


def _mosquitto(workdir: Path, name: str) -> Mosquitto:
    try:
        return Mosquitto(workdir, name=name)
    except MosquittoMissing as exc:
        pytest.fail(str(exc), pytrace=False)


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Mosquitto]:
    """One running broker, stopped after the test."""
    with _mosquitto(tmp_path / "broker", "broker") as b:
        yield b


@pytest.fixture
def broker_pair(tmp_path: Path) -> Iterator[tuple[Mosquitto, Mosquitto]]:
    """(local, cloud): the site broker devices publish to, and the upstream one."""
    with _mosquitto(tmp_path / "local", "local") as local, _mosquitto(tmp_path / "cloud", "cloud") as cloud:
        yield local, cloud
