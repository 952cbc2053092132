"""Kafka plumbing, below every service: topic names and specs (`registry.py`), the `kafka` settings
(`settings.py`) and client options (`clients.py`), creating and checking topics (`admin.py`), producing and
tailing (`io.py`), reading one record at its coordinates (`records.py`), reading a range (`ranges.py`), and the
local broker (`local_broker.py`). It imports only `schemas/`; the commands built on it are in `guardstream/`."""

from topics.registry import TopicNames, TopicSpec, topic_specs

__all__ = ["TopicNames", "TopicSpec", "topic_specs"]
