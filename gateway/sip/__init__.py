"""asyncio SIP stack, layered message -> transport -> transaction -> dialog -> call (see docs/sip-stack.md).

sip-core layers: message.py (parser/serializer), transport.py (UDP+TCP), transaction.py (RFC 3261 §17),
digest.py (RFC 2617/7616), sdp.py (offer/answer). Dialog, UA, registration and auth policy sit on top.
"""
