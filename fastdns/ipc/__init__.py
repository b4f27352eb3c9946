"""Contracts between fastdns processes: the shared-memory layout and the snapshot image format."""
