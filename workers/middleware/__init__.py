"""Pressline's Dramatiq middleware, one per file."""
