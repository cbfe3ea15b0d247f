"""Static pages served by the gateway: /call (browser calls over WebRTC) and /calls/live (live calls)."""
