"""Fleets: many devices, each with its own channel, arrivals and policy, sharing one edge server."""
