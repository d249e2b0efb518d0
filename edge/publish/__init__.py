"""MQTT publishing: topics, payload schemas, the on-disk outbox and the publisher."""

from edge.publish.client import Publisher
from edge.publish.connection import BrokerError, Subscriber, make_client
from edge.publish.outbox import Outbox
from edge.publish.topics import Topics

__all__ = ["BrokerError", "Outbox", "Publisher", "Subscriber", "Topics", "make_client"]
