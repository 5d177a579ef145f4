"""Jimi IoT WiFiKit app and devices: message types, topics, simulator."""
