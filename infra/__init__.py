"""Packaging, deploys and the local stack runner."""
