"""How good are the local model's answers to the main job? (issue 11 §1)

Run (from the repository root)::

    python bench/local_quality.py                 # all 269 films, as the README's main job
    python bench/local_quality.py --rows 40       # 40 films spread over the file, for quick iterations
    python bench/local_quality.py --rows 40 --extra repeat_penalty=1.1 --param temperature=0.2
    python bench/local_quality.py --rows 40 --json   # JSON mode (no schema) instead

It runs what ``python -m pdbatch map data/movies.csv --prompt
data/prompts/movies.toml --out movies.parquet`` runs: the prompt file is read
and merged by the CLI's own :func:`pdbatch.cli.map_options`, the frame goes
through ``df.llm.map`` on ``backend="local"`` (the bundled
SmolLM2-135M-Instruct; no key needed), with ``cache=False`` on an empty job
store (a temporary ``PDBATCH_HOME``) so every row is answered afresh, and
``raw_column`` to see the text of failed rows. It prints:

* **valid**: rows whose answer parsed and validated against the schema
  (no error cell);
* the error cells by kind (the text before the first ``:``), and how many
  truncated answers show a repetition loop in their raw text;
* **repeated labels**: share of valid rows whose ``categories`` list holds a
  genre more than once;
* **title-only summaries**: share of valid rows whose ``summary`` is the
  title (or title and year, in any wording of brackets and punctuation) or
  is not a sentence (fewer than five words, or no verb-like word after the
  title is stripped; see :func:`bad_summary`);
* **looping summary**: share of valid rows whose ``summary`` says one
  three-word phrase three times or more (a loop the schema cut short);
* **genre agreement** (a rough accuracy proxy): share of valid rows whose
  first category is one of the genres of the CSV's ``Genre`` column;
* **top category**, e.g. how often ``film-noir`` is chosen;
* **wall** time of the ``map`` call, model loading included, and the tokens
  read and written.

``--rows N`` takes N films evenly spaced over the file (not the first N,
which are all from the 1920s-40s). ``--param K=V`` adds a request body
parameter (as the CLI's ``--param``); ``--extra K=V`` adds a provider
field through ``extra_body`` (e.g. llama.cpp's ``repeat_penalty``,
``top_k``, ``min_p``). ``--prompt`` picks another prompt file.

Measured on 2026-12-02 on a quiet 2-core machine, all 269 films, the two
versions run one after the other:

=========================  =====================  =====================
                           before (b5c7982)       after
=========================  =====================  =====================
valid                      225/269 = 83.6%        269/269 = 100.0%
truncated (all but 1 loop) 44                     0
repeated labels            200/225 = 88.9%        0/269 = 0.0%
title-only / not sentence  165/225 = 73.3%        5/269 = 1.9%
"film-noir" first          120/225                0 ("noir" instead)
genre agreement            31/225 = 13.8%         62/269 = 23.0%
tokens in / out            45,063 / 20,917        30,799 / 13,762
wall                       516.5 s                377.1 s
=========================  =====================  =====================

Side by side on the same 30 films (``--rows 30 --workers 1``, both versions
at once on shared cores): before 712 s (94 output tokens a row, 7 rows
truncated), after 462 s (47 a row, none truncated).
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import re
import sys
import tempfile
import time
import warnings

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
_WORD = re.compile(r"[a-z0-9']+")


def _words(text: str) -> list:
    return _WORD.findall(str(text).lower())


def bad_summary(summary, title, year) -> str:
    """Why ``summary`` is not a sentence about the film: ``"title"``, ``"short"``, or ``""`` when fine.

    ``"title"``: once the title's words and the year are removed, fewer than
    three words are left (``"Nosferatu (1922)"``, ``"The film Nosferatu."``).
    ``"short"``: fewer than five words in all, or it does not end like a
    sentence (``.``, ``!`` or ``?``).
    """
    if not isinstance(summary, str) or not summary.strip():
        return "short"
    words = _words(summary)
    title_words = set(_words(title)) | {str(year), "the", "film", "movie", "a", "an"}
    if len([w for w in words if w not in title_words]) < 3:
        return "title"
    if len(words) < 5 or not summary.strip().endswith((".", "!", "?", '."', ".'")):
        return "short"
    return ""


def loops_in(text) -> bool:
    """Whether ``text`` says one three-word phrase three times or more ("the rolling hills of the rolling hills...")."""
    words = _words(text) if isinstance(text, str) else []
    grams = collections.Counter(zip(words, words[1:], words[2:]))
    return bool(grams) and max(grams.values()) >= 3


def _kv(text: str):
    key, _, value = text.partition("=")
    try:
        return key, json.loads(value)
    except json.JSONDecodeError:
        return key, value


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rows", type=int, default=None, help="films to run, evenly spaced (default: all)")
    ap.add_argument("--prompt", default=os.path.join(ROOT, "data", "prompts", "movies.toml"))
    ap.add_argument("--input", default=os.path.join(ROOT, "data", "movies.csv"))
    ap.add_argument("--param", action="append", default=[], metavar="K=V", help="request body parameter")
    ap.add_argument("--extra", action="append", default=[], metavar="K=V", help="extra_body field")
    ap.add_argument("--json", action="store_true", help="JSON mode (no schema) instead of the prompt's schema")
    ap.add_argument("--workers", type=int, default=None)
    ap.add_argument("--show", type=int, default=0, help="print N sample answers and N failures")
    ap.add_argument("--save", metavar="FILE.parquet", help="also write the frame with the answers")
    args = ap.parse_args()

    os.environ["PDBATCH_HOME"] = tempfile.mkdtemp(prefix="pdbatch-quality-")
    import numpy as np
    import pandas as pd
    import pdbatch  # noqa: F401  (registers .llm)
    from pdbatch.cli import build_parser, map_options
    from pdbatch.core.loops import repetition_loop

    cli = ["map", args.input, "--prompt", args.prompt, "--backend", "local"]
    for p in args.param:
        cli += ["--param", p]
    ns = build_parser().parse_args(cli)
    opts = map_options(ns)
    if args.json:  # the prompt file's schema gives way to JSON mode
        opts["response_format"] = "json"
    extra = dict(_kv(e) for e in args.extra)
    if extra:
        opts["extra_body"] = extra
    if args.workers:
        opts["workers"] = args.workers

    df = pd.read_csv(args.input)
    if args.rows is not None and args.rows < len(df):
        df = df.iloc[np.linspace(0, len(df) - 1, args.rows).round().astype(int)]
    template = opts.pop("template")

    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out = df.llm.map(template, cache=False, progress=False, raw_column="llm_raw", **opts)
    wall = time.perf_counter() - t0

    n = len(out)
    err = out["llm_error"]
    ok = out[err.isna()]
    kinds = collections.Counter(str(e).split(":")[0] for e in err.dropna())
    loops = sum(1 for e, raw in zip(err, out["llm_raw"])
                if isinstance(e, str) and e.startswith("truncated") and repetition_loop(raw or ""))
    print(f"prompt {os.path.relpath(args.prompt, ROOT)}; rows {n}; params {ns.param or '-'}; extra {extra or '-'}"
          f"; {'JSON mode' if args.json else 'schema'}")
    print(f"valid            {len(ok)}/{n} = {len(ok) / n:.1%}")
    print(f"errors           {dict(kinds) or '-'}; truncated with a repetition loop: {loops}")
    if not args.json and len(ok):
        cats = ok["categories"]
        rep = sum(1 for c in cats if isinstance(c, (list, np.ndarray)) and len(set(c)) < len(c))
        why = [bad_summary(s, t, y) for s, t, y in zip(ok["summary"], ok["Series_Title"], ok["Released_Year"])]
        bad = sum(1 for w in why if w)
        agree = sum(1 for c, g in zip(cats, ok["Genre"])
                    if len(c) and str(c[0]).lower() in str(g).lower().replace("sci-fi", "sci-fi"))
        first = collections.Counter(str(c[0]) for c in cats if len(c))
        every = collections.Counter(x for c in cats for x in set(c))
        print(f"repeated labels  {rep}/{len(ok)} = {rep / len(ok):.1%} of valid rows")
        print(f"title-only/not a sentence  {bad}/{len(ok)} = {bad / len(ok):.1%} of valid rows "
              f"(title {why.count('title')}, short {why.count('short')})")
        looping = sum(1 for s in ok["summary"] if loops_in(s))
        print(f"looping summary  {looping}/{len(ok)} = {looping / len(ok):.1%} of valid rows (a 3-word phrase 3+ times)")
        print(f"genre agreement  {agree}/{len(ok)} = {agree / len(ok):.1%} (first category in the CSV's Genre)")
        print(f"first category   {first.most_common(5)}; film-noir in {every.get('film-noir', 0)} rows")
        print(f"summary length   median {int(ok['summary'].str.len().median())} chars")
    elif args.json and len(ok):
        new = ok.drop(columns=list(df.columns) + ["llm_error", "llm_raw"])
        nested = sum(1 for _, row in new.iterrows() if any(isinstance(v, dict) for v in row.dropna()))
        print(f"nested objects   {nested}/{len(ok)} valid rows hold an object inside the object")
    usage = out.attrs.get("pdbatch", {}).get("usage", {})
    print(f"wall             {wall:.1f} s ({wall / n:.2f} s/row); tokens in {usage.get('input_tokens')}, "
          f"out {usage.get('output_tokens')} ({(usage.get('output_tokens') or 0) / n:.0f}/row)")
    for _, row in ok.head(args.show).iterrows():
        print("  ok ", row["Series_Title"], "->", row.get("llm_raw"))
    for _, row in out[err.notna()].head(args.show).iterrows():
        print("  err", row["Series_Title"], "->", row["llm_error"][:100], "|", str(row["llm_raw"])[:200])
    if args.save:
        out.to_parquet(args.save)
    return 0


if __name__ == "__main__":
    sys.exit(main())
