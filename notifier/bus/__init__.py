"""Stage 1, the bus: subscribing, the envelope and its limits, signatures, fedmsg.d import."""
