"""Checkpoint registry, cache and downloads."""
