"""The plan's token predictions, in the runtime's headline terms: tokens
computed, tokens requested and generated tokens per input."""

from __future__ import annotations

import math

import pytest

from ttsc.common.capabilities import Capabilities
from ttsc.compiler.pipeline import compile_source
from ttsc.compiler.utility import (PRIOR_MEAN_COMPLETION_TOKENS, Calibration, ModelCalibration,
                                   calibration_path, expected_completion_tokens)

SC = '''model policy = "smollm2-135m"
prompt solve = "{question} Give the final answer as 'Answer: <number>'."
strategy sc(question) {
    samples = generate(policy, solve, n=16, temperature=0.7, max_tokens=40)
    return vote(extract(samples, number))
}
'''


@pytest.fixture(autouse=True)
def isolated_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("TTSC_CACHE_DIR", str(tmp_path / "cache"))


def facts(source: str, file: str = "t.tts", **kwargs) -> dict:
    return compile_source(source, file, **kwargs).plan.facts


def test_expected_completion_length_prior_and_calibrated():
    mean = PRIOR_MEAN_COMPLETION_TOKENS
    assert expected_completion_tokens(40) == pytest.approx(mean * (1 - math.exp(-40 / mean)))
    assert expected_completion_tokens(0) == 0
    # Three of four finished, at 4, 8 and 50 tokens; the fourth ran to the limit.
    pilot = ModelCalibration("m", 1, 1, 0.5, [4, 8, 50], 0.75, 1, 4)
    assert expected_completion_tokens(40) > expected_completion_tokens(40, pilot)
    assert expected_completion_tokens(40, pilot) == pytest.approx(0.75 * (4 + 8 + 40) / 3 + 0.25 * 40)


def test_self_consistency_predicts_computed_requested_and_generated():
    f = facts(SC)
    prompt = f["prefill_tokens_per_input"]["with_sharing"]  # one sample's prompt
    generated = 16 * round(expected_completion_tokens(40))
    assert f["predicted_generated_tokens_per_input"] == generated
    assert f["predicted_tokens_requested_per_input"] == 16 * prompt + generated  # the prompt per sample
    # Computed: the prompt once; the part every input shares, once per run.
    assert f["predicted_tokens_per_input"] == prompt - f["prefill_shared_across_inputs"] + generated
    assert f["tokens_at_most_per_input"] == prompt + 16 * 40
    assert f["predicted_lengths"].startswith("priors: inputs assumed 32 tokens")


def test_a_calibration_gives_measured_input_and_completion_lengths(tmp_path):
    file = tmp_path / "sc.tts"
    file.write_text(SC)
    before = facts(SC, str(file))
    pilot = ModelCalibration("smollm2-135m", 1, 1, 0.5, [6] * 15, 15 / 16, 1, 16)
    cal = Calibration("sc", str(file), "dev.jsonl", {}, {"policy": pilot}, input_tokens=8.0)
    path = calibration_path(file)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(cal.to_json())
    after = facts(SC, str(file))
    assert after["predicted_generated_tokens_per_input"] == 16 * round(15 / 16 * 6 + 1 / 16 * 40)
    # The question: 8 tokens measured instead of 32 assumed.
    shorter = before["prefill_tokens_per_input"]["with_sharing"] - after["prefill_tokens_per_input"]["with_sharing"]
    assert shorter == 32 - 8
    assert after["predicted_lengths"].startswith("calibrated on dev.jsonl (inputs 8 tokens")


def test_an_engine_without_a_prefix_cache_computes_what_is_requested():
    f = facts(SC, capabilities={"policy": Capabilities(prefix_cache=False)})
    assert f["predicted_tokens_per_input"] == f["predicted_tokens_requested_per_input"]


def test_verifier_prompts_hold_candidates_at_their_expected_length():
    source = SC.replace("return vote(extract(samples, number))",
                        "return best(samples, by=verify(policy, samples))")
    f = facts(source)
    # Candidates read by the verifier are shorter than max_tokens, as expected.
    assert f["predicted_tokens_requested_per_input"] < (f["prefill_tokens_per_input"]["without_sharing"]
                                                       + 16 * 40)
    assert f["predicted_generated_tokens_per_input"] == 16 * round(expected_completion_tokens(40))
