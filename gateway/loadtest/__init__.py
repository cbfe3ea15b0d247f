"""`gateway loadtest`: drive SIPp against a gateway and report from SIPp's own statistics."""
