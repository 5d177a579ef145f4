"""GT06 (Jimi / Concox) trackers over TCP.

``codec`` frames, checks and decodes bytes and builds the server's replies; ``listener`` serves
connections within ``limits``; ``record`` maps a decoded frame to a Tracksolid record;
``describe`` is ``gateway decode gt06``.
"""
