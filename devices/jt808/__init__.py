"""JT/T 808 terminals (Jimi IoT and most Chinese 4G trackers): frame builders and a simulator."""
