"""The gate's regression set is the texts no job trains on: hard cases and over-blocking contrasts."""

from __future__ import annotations

from trainer.lite_build import training_data
from trainer.regression import regression_set


def test_the_regression_set_is_never_trained_on() -> None:
    items = regression_set(None)
    request, response = training_data()
    texts = set(request.texts) | set(response.prompts) | set(response.responses)
    assert items and not {i.event.text for i in items} & texts
    assert not {i.event.response for i in items if i.event.response} & texts
    assert {i.request_harmful for i in items} == {True, False}
    assert {i.response_harmful for i in items} == {True, False, None}
    sample = regression_set(50)
    assert len(sample) == 50 and [i.event.event_id for i in sample] == [i.event.event_id for i in regression_set(50)]
