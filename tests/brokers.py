"""The tests' brokers: the same launcher ``gateway demo`` uses (gateway/mosquitto.py)."""

from gateway.mosquitto import Mosquitto, MosquittoMissing, find_mosquitto

__all__ = ["Mosquitto", "MosquittoMissing", "find_mosquitto"]
