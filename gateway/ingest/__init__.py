"""Message sources besides MQTT: native device protocols decoded into the records the packs expect.

``tracksolid`` is the normalised tracker record; ``gt06`` is the Jimi / Concox TCP protocol
(codec, listener, mapping to that record).
"""
