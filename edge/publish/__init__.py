"""MQTT publishing: topics, payload schemas, the on-disk outbox and the publisher."""

from edge.publish.client import BrokerError, Publisher
from edge.publish.outbox import Outbox
from edge.publish.topics import Topics

__all__ = ["BrokerError", "Outbox", "Publisher", "Topics"]
