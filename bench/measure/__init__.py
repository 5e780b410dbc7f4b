"""Measurement: opening deployed artifacts, timing them, sampling memory, counting size, params and MACs."""
