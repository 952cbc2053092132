"""The moderation worker. An event's path, one module per step:

intake.py (poll) -> decode.py -> content_key.py -> cache.py -> fetch.py
-> batcher.py (identical events in flight share one item)  -> guard/ (backends, run by guard_stage.py) -> emit.py -> commit.py

served_model.py binds each event to the model served when it was admitted; model_watch.py follows
moderation.models and switches that model without a restart.
"""
