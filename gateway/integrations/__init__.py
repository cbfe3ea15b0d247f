"""Adapters that let third-party voice frameworks act as engines, over the public engine protocol only.

Each module here imports its framework (an optional extra, e.g. `pip install 'telephony-gateway[pipecat]'`); the
core never imports this package, so the gateway runs without any of them installed.
"""
