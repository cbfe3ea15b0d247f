"""Carrier adapters, one module per carrier, each a `gateway.carrier.Carrier` registered as an entry point."""
