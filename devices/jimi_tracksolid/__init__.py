"""Jimi IoT Tracksolid / Tracksolid Pro GPS trackers: message types, topics, simulator."""
