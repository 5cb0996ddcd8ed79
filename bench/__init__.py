"""Benchmarks: Pressline's Redis Streams broker against Dramatiq's stock RedisBroker (``make bench``)."""
