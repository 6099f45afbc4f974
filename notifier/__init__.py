"""fedmsg-notify: a notification fan-out daemon for fedmsg (ZeroMQ) buses."""

__version__ = "0.1.0"
