"""Tests for pdbatch/core/images.py: image URLs and files the API would refuse become reasons, not requests."""

from __future__ import annotations

import base64
import math

import pandas as pd
import pytest

from pdbatch.core.images import IMAGE_MAX_BYTES, image_part, image_url_problem


def data_url(n_bytes: int, mime: str = "image/png") -> str:
    """A base64 data URL whose payload decodes to ``n_bytes`` bytes (built without encoding that many)."""
    full, rest = divmod(n_bytes, 3)
    tail = {0: "", 1: "AA==", 2: "AAA="}[rest]
    return f"data:{mime};base64," + "AAAA" * full + tail


def test_data_url_helper_sizes_are_exact():
    for n in (0, 1, 2, 3, 10):
        assert len(base64.b64decode(data_url(n).split(",", 1)[1])) == n


@pytest.mark.parametrize("ref, url", [
    ("HTTPS://example.com/A.png", "https://example.com/A.png"),
    ("Http://example.com/a.png", "http://example.com/a.png"),
    ("DATA:image/png;base64,AAAA", "data:image/png;base64,AAAA"),
    ("data:IMAGE/PNG;base64,AAAA", "data:IMAGE/PNG;base64,AAAA"),
])
def test_upper_case_schemes_are_urls_sent_in_lower_case(ref, url):
    assert image_part(ref) == ({"type": "image_url", "image_url": {"url": url}}, None)


def test_upper_case_file_scheme_is_a_local_file(tmp_path):
    p = tmp_path / "pic.png"
    p.write_bytes(b"png")
    part, reason = image_part("FILE://" + str(p))
    assert reason is None and part["image_url"]["url"] == "data:image/png;base64," + base64.b64encode(b"png").decode()


@pytest.mark.parametrize("ref, words", [
    ("data:text/plain;base64,aGk=", ["data URL is not an image", "'text/plain'", "data:image/"]),
    ("data:,hello", ["data URL is not an image", "''"]),
    ("data:image/png;base64", ["no ','"]),
    ("ftp://example.com/a.png", ["unsupported image URL scheme 'ftp'", "ftp://example.com/a.png"]),
])
def test_urls_the_api_refuses_are_reasons(ref, words):
    part, reason = image_part(ref)
    assert part is None
    for w in words:
        assert w in reason


@pytest.mark.parametrize("value", [None, float("nan"), math.nan, pd.NA])
def test_missing_value_is_a_reason(value):
    part, reason = image_part(value)
    assert part is None and reason.startswith("missing value (None or NaN) in a list of images")


def test_local_file_over_the_limit_is_a_reason_and_at_the_limit_is_sent(tmp_path):
    big = tmp_path / "big.png"
    with open(big, "wb") as fh:
        fh.truncate(IMAGE_MAX_BYTES + 1)
    part, reason = image_part(str(big))
    assert part is None
    assert reason.startswith("image is too large (20.0 MB; the API takes at most 20 MB per image)")
    assert str(big) in reason and "resize" in reason
    edge = tmp_path / "edge.png"
    with open(edge, "wb") as fh:
        fh.truncate(IMAGE_MAX_BYTES)
    part, reason = image_part(str(edge))
    assert reason is None and len(part["image_url"]["url"]) > IMAGE_MAX_BYTES


def test_data_url_over_the_limit_is_a_reason_and_at_the_limit_is_sent():
    over = data_url(IMAGE_MAX_BYTES + 1)
    part, reason = image_part(over)
    assert part is None and reason.startswith("image is too large")
    assert len(reason) < 300  # the data URL itself is cut short in the message
    assert image_part(data_url(IMAGE_MAX_BYTES))[1] is None
    assert image_part(data_url(IMAGE_MAX_BYTES - 1))[1] is None


@pytest.mark.parametrize("url", ["https://x/a.png", "HTTP://x/a.png", "data:image/webp;base64,AAAA",
                                 "Data:Image/JPEG;base64,AAAA"])
def test_image_url_problem_accepts(url):
    assert image_url_problem(url) is None


@pytest.mark.parametrize("url, start", [
    ("data:application/octet-stream;base64,AAAA", "data URL is not an image"),
    ("gopher://x/a.png", "unsupported image URL scheme 'gopher'"),
    ("x/a.png", "unsupported image URL scheme ''"),
    ("https:a.png", "unsupported image URL scheme 'https'"),
    ("too large", "image is too large"),
])
def test_image_url_problem_refuses(url, start):
    if url == "too large":
        url = data_url(IMAGE_MAX_BYTES + 1, "image/jpeg")
    assert image_url_problem(url).startswith(start)
