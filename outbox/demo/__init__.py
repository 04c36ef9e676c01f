"""`outbox demo`: an example application, the relay and a consumer on an embedded broker."""
