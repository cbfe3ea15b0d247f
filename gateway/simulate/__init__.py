"""`gateway simulate`: synthetic callers that follow a YAML script against a running gateway over a carrier's own
protocol (loopback only), and report turn timing as the caller heard it next to the gateway's own figures."""
