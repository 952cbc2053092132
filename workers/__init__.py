"""The moderation worker. An event's path, one module per step, wired by worker.py:

intake.py (poll) -> admission.py: decode.py -> content_key.py -> cache.py (hits) -> fetch.py (image_address.py)
-> moderation.py: batcher.py (identical events in flight share one item) -> guard/ (backends, run by guard_stage.py)
-> answering.py: emit.py -> flow_control.py: commit.py (revokes, backpressure)

served_model.py binds each event to the model served when it was admitted; model_lifecycle.py serves, switches
and retires it; model_watch.py follows moderation.models and switches that model without a restart.
task_supervision.py keeps the tasks of events whose images are fetched first. commands.py is `guardstream worker`,
dependencies.py what it checks at start. This package stands on runtime/, topics/ and schemas/ only.
"""
