"""Test helpers that run real servers on loopback."""
