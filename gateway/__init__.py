"""Telephony gateway core: frame bus, call model, engines, SIP/RTP stack, REST API. Never imports a carrier."""
__version__ = "0.1.0"
