"""Checkpoint access shared by the vision and language workers: resolving, partial loading, fingerprints."""
