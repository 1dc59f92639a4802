"""Quantgate gateway: the OpenAI-compatible HTTP surface, routing, errors and metrics.

Imports ``serving``; never imported by it.
"""
