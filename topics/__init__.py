"""Topic names and settings, and the commands that create and verify them on a broker."""

from topics.registry import TopicNames, TopicSpec, topic_specs

__all__ = ["TopicNames", "TopicSpec", "topic_specs"]
