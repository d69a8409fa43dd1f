"""``name=``: what ``pdbatch jobs`` calls a job; kept with the job, never part of its identity."""

from __future__ import annotations

import pandas as pd
import pytest

import pdbatch
from pdbatch.errors import OptionError

FAST = dict(model="gpt-4o-mini", poll_interval=0.02, max_poll_interval=0.05, progress=False)


def frame() -> pd.DataFrame:
    return pd.DataFrame({"word": ["a", "b", "c"]})


def test_default_name_is_the_templates_first_words(make_server, make_client):
    srv = make_server()
    out = frame().llm.map("Say the word {word} back to me loudly please", client=make_client(srv), **FAST)
    assert out.attrs["pdbatch"]["name"] == "Say the word {word} back to..."
    assert pdbatch.jobs()["name"].tolist() == ["Say the word {word} back to..."]


def test_renaming_reattaches_to_the_same_job(make_server, make_client):
    srv = make_server()
    first = frame().llm.map("say {word}", client=make_client(srv), name="words v1", **FAST)
    assert first.attrs["pdbatch"]["name"] == "words v1"
    again = frame().llm.map("say {word}", client=make_client(srv), name="words, final", **FAST)
    assert again.attrs["pdbatch"]["job_id"] == first.attrs["pdbatch"]["job_id"]
    assert again.attrs["pdbatch"]["counts"]["sent"] == 0 and srv.stats.batches_created == 1
    assert again.attrs["pdbatch"]["name"] == "words, final"
    listing = pdbatch.jobs()
    assert listing["name"].tolist() == ["words, final"] and len(listing) == 1
    # Without name= a re-run keeps the name the job has.
    third = frame().llm.map("say {word}", client=make_client(srv), **FAST)
    assert third.attrs["pdbatch"]["name"] == "words, final"
    job = frame().llm.submit("say {word}", client=make_client(srv), name="on submit", model="gpt-4o-mini",
                             poll_interval=0.02)
    assert job.name == "on submit" and pdbatch.Job.load(job.id, client=make_client(srv)).name == "on submit"


@pytest.mark.parametrize("bad", ["", "   ", 3, ["x"]])
def test_a_bad_name_is_refused_before_anything_is_sent(make_server, make_client, bad):
    srv = make_server()
    for method in ("map", "submit", "estimate", "embed"):
        with pytest.raises(OptionError, match="name must be a non-empty string or None"):
            kwargs = {} if method == "embed" else dict(model="gpt-4o-mini")
            getattr(frame().llm, method)("say {word}", client=make_client(srv), name=bad, **kwargs)
    assert srv.stats.log == []
