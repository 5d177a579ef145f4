"""Long-running gateway service pieces: broker I/O and delivery guarantees."""
