"""The sidecar: the relay loop, its store (all relay SQL), the publisher contract, envelopes.

`from outbox.relay import Relay` is the documented entry point of the Python API.
"""

from outbox.relay.loop import Relay, RelayState, default_publisher

__all__ = ["Relay", "RelayState", "default_publisher"]
