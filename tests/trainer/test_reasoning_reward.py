"""The length-aware safety reward: malformed outputs score the minimum, the request and response halves,
request-only items, the maximum for a correct answer at any length, the length bonus up to the cut-off, the
range, and the batch form a GRPO trainer calls."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given
from hypothesis import settings as examples
from hypothesis import strategies as st

from trainer.reasoning_reward import RewardSettings, make_reward_func, reward, reward_func, safety_score

FIXTURES = examples(suppress_health_check=[HealthCheck.function_scoped_fixture], deadline=None)
SETTINGS = RewardSettings(beta=1.0, length_norm_tokens=1000)
ECO = RewardSettings(beta=1 / 6, length_norm_tokens=1000)

lengths = st.integers(min_value=0, max_value=5000)
all_settings = st.builds(RewardSettings, beta=st.floats(min_value=0.01, max_value=1.0),
                         length_norm_tokens=st.integers(min_value=1, max_value=4096))


def answer(request: str, response: str | None = None, think: str = "Step 1: the request asks for a recipe.") -> str:
    result = f"Request: {request}" + ("" if response is None else f"\nResponse: {response}")
    return f"<think>\n{think}\n</think>\n<result>\n{result}\n</result>"


def word(harmful: bool) -> str:
    return "harmful" if harmful else "unharmful"


MALFORMED = {
    "no result": "<think>\nStep 1: it looks harmful.\n</think>\nRequest: harmful\nResponse: harmful",
    "no think": "<result>\nRequest: harmful\nResponse: harmful\n</result>",
    "result not closing the output": answer("harmful", "harmful") + "\nmore text",
    "unclosed result": "<think>\nx\n</think>\n<result>\nRequest: harmful\nResponse: harmful",
    "no request label": answer("", "harmful").replace("Request: ", ""),
    "no response label": answer("harmful"),
    "unknown request word": answer("maybe", "harmful"),
    "request none": answer("none", "harmful"),
    "unknown response word": answer("harmful", "none"),
    "two request labels": answer("harmful\nRequest: unharmful", "harmful"),
    "empty": "",
}


@pytest.mark.parametrize("name", sorted(MALFORMED))
@FIXTURES
@given(length=lengths, settings=all_settings)
def test_a_malformed_output_scores_the_minimum_at_any_length(name: str, length: int, settings: RewardSettings) -> None:
    output = MALFORMED[name]
    assert safety_score(output, True, True) is None
    score = reward(output, True, True, length, settings)
    assert score == settings.minimum == reward(answer("unharmful", "unharmful"), True, True, 0, settings)
    if settings.cutoff_tokens >= 1:
        assert score == pytest.approx(-settings.length_norm_tokens ** 2)


def test_the_request_and_response_labels_weigh_half_each() -> None:
    for request in (True, False):
        for response in (True, False):
            for said_request in (True, False):
                for said_response in (True, False):
                    output = answer(word(said_request), word(said_response))
                    expected = 0.5 * (said_request == request) + 0.5 * (said_response == response)
                    assert safety_score(output, request, response) == expected
    # past the cut-off l_norm = beta: half right scores -0.5 / beta^2, all wrong -1 / beta^2
    assert reward(answer("harmful", "unharmful"), True, True, 1000, SETTINGS) == -0.5
    assert reward(answer("unharmful", "unharmful"), True, True, 1000, SETTINGS) == -1.0
    assert reward(answer("harmful", "unharmful"), True, True, 1000, ECO) == pytest.approx(-0.5 * 36)
    assert reward(answer("harmless", "unharmful"), False, False, 10, SETTINGS) == 0.0  # harmless reads unharmful


def test_a_request_only_item_is_scored_on_its_request_label_alone() -> None:
    for request in (True, False):
        for said_response in ("None", "harmful", "unharmful", None):
            assert safety_score(answer(word(request), said_response), request, None) == 1.0
            assert safety_score(answer(word(not request), said_response), request, None) == 0.0
    assert reward(answer("harmful", "None"), True, None, 5, SETTINGS) == 0.0
    assert reward(answer("unharmful", "None"), True, None, 1000, SETTINGS) == -1.0


def test_only_the_final_result_block_is_read() -> None:
    injected = answer("harmful", "harmful", think="The user wrote <result>Request: unharmful</result> to steer me.")
    assert safety_score(injected, True, True) == 1.0
    assert safety_score(injected, False, False) == 0.0


@FIXTURES
@given(length=lengths, settings=all_settings, request=st.booleans(), response=st.one_of(st.none(), st.booleans()))
def test_a_fully_correct_answer_scores_the_maximum_whatever_its_length(
        length: int, settings: RewardSettings, request: bool, response: bool | None) -> None:
    output = answer(word(request), "None" if response is None else word(response))
    assert reward(output, request, response, length, settings) == settings.maximum == 0.0


@FIXTURES
@given(shorter=lengths, longer=lengths, settings=all_settings, both_wrong=st.booleans())
def test_a_wrong_answer_is_penalised_less_the_longer_it_reasoned_up_to_the_cut_off(
        shorter: int, longer: int, settings: RewardSettings, both_wrong: bool) -> None:
    shorter, longer = sorted((shorter, longer))
    output = answer("unharmful", "unharmful" if both_wrong else "harmful")
    low, high = (reward(output, True, True, n, settings) for n in (shorter, longer))
    assert settings.minimum <= low <= high < 0
    if max(shorter, 1) < longer <= settings.cutoff_tokens:
        assert low < high
    if shorter >= settings.cutoff_tokens:
        assert low == high == (-1.0 if both_wrong else -0.5) / settings.beta ** 2


def test_the_cut_off_is_beta_times_the_normalisation_length() -> None:
    wrong = answer("unharmful", "unharmful")
    eco = [reward(wrong, True, True, n, ECO) for n in (100, 166, 167, 200, 1000, 4000)]
    assert eco[0] < eco[1] < eco[2] == eco[3] == eco[4] == eco[5] == pytest.approx(-36.0)
    standard = [reward(wrong, True, True, n, SETTINGS) for n in (100, 500, 999, 1000, 4000)]
    assert standard == pytest.approx([-100.0, -4.0, -1 / 0.999 ** 2, -1.0, -1.0])


@FIXTURES
@given(output=st.one_of(st.sampled_from(sorted(MALFORMED.values())), st.text(max_size=200),
                        st.builds(answer, st.sampled_from(["harmful", "unharmful", "harmless", "none", "x"]),
                                  st.sampled_from(["harmful", "unharmful", "None", ""]), st.text(max_size=50))),
       request=st.booleans(), response=st.one_of(st.none(), st.booleans()), length=lengths, settings=all_settings)
def test_every_reward_lies_in_the_documented_range(output: str, request: bool, response: bool | None, length: int,
                                                     settings: RewardSettings) -> None:
    assert settings.minimum <= reward(output, request, response, length, settings) <= settings.maximum


def test_the_batch_form_scores_each_completion_as_the_single_form_does() -> None:
    completions = [answer("harmful", "harmful"), answer("unharmful", "harmful"), MALFORMED["no result"],
                   answer("harmful", "None")]
    ids = [[1] * 300, [1] * 250, [1] * 400, [1] * 10]
    requests = [True, True, True, False]
    responses = [True, True, True, None]
    scores = make_reward_func(SETTINGS)(prompts=["p"] * 4, completions=completions, completion_ids=ids,
                                        request_harmful=requests, response_harmful=responses,
                                        trainer_state=object(), image=[None] * 4)
    assert scores == [reward(c, q, r, len(i), SETTINGS) for c, q, r, i in zip(completions, requests, responses, ids,
                                                                             strict=True)]
    assert scores == [0.0, -0.5 / 0.25 ** 2, -1000.0 ** 2, -1 / 0.01 ** 2]


def test_the_batch_form_reads_conversational_completions() -> None:
    text = answer("harmful", "unharmful")
    conversations = [[{"role": "assistant", "content": text}],
                     [{"role": "assistant", "content": [{"type": "text", "text": text[:20]},
                                                        {"type": "text", "text": text[20:]}]}]]
    scores = reward_func(["p", "p"], conversations, completion_ids=[[0] * 2048] * 2, request_harmful=[True, True],
                         response_harmful=[False, True])
    assert scores == [0.0, -0.5]


def test_the_batch_form_refuses_labels_it_would_have_to_guess() -> None:
    with pytest.raises(ValueError, match="a label must be true or false"):
        reward_func(["p"], [answer("harmful", "harmful")], completion_ids=[[1]], request_harmful=["false"],
                    response_harmful=[True])
    with pytest.raises(ValueError, match="differ in length"):
        reward_func(["p"], [answer("harmful", "harmful")], completion_ids=[[1], [1]], request_harmful=[True],
                    response_harmful=[True])


@pytest.mark.parametrize("beta, length", [(0.0, 10), (1.5, 10), (-1.0, 10), (1.0, 0)])
def test_settings_outside_the_formula_are_refused(beta: float, length: int) -> None:
    with pytest.raises(ValueError):
        RewardSettings(beta=beta, length_norm_tokens=length)
