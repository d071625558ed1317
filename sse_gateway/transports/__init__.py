"""Transports: render a stream's events in one wire format, and parse its requests."""
