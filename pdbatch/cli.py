"""The ``pdbatch`` command line.

``pdbatch map INPUT --prompt FILE.toml --out OUTPUT`` is the main job: read a
CSV / Parquet / JSONL file, run ``df.llm.map`` and write the enriched frame.
``pdbatch serve`` runs the local OpenAI-compatible Batch API server.
``pdbatch jobs`` / ``status ID`` / ``cancel ID`` / ``result ID --out FILE``
look after jobs in the job store.

This module holds the parser, :func:`main` and the ``map`` and ``serve``
commands; the job commands are in :mod:`pdbatch.cli_jobs`, reading and
writing frames in :mod:`pdbatch.cli_files`.

Bad input exits with status 2 and one line on stderr, having written nothing.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from typing import Any, Dict, Optional, Sequence

# READERS, WRITERS, write_frame and job_status are imported to keep pdbatch.cli.X working.
from .cli_files import READERS, WRITERS, CliError, check_out, check_writable, read_frame, write_frame  # noqa: F401
from .cli_jobs import cmd_cancel, cmd_jobs, cmd_result, cmd_status, job_status  # noqa: F401
from .errors import InputError, OptionError, PdbatchError
from .core.names import SPEC_ARGUMENTS, suggest
from .options import check

__all__ = ["main", "build_parser"]

PROMPT_KEYS = ("template", "system", "schema", "json", "model", "images", "image_detail", "backend", "params")


def _toml():
    try:
        import tomllib
    except ImportError:  # Python 3.10
        import tomli as tomllib
    return tomllib


def load_prompt(path: str) -> Dict[str, Any]:
    """Read a prompt file (TOML): template, system, schema, model, ...

    Examples
    --------
    >>> import tempfile, os
    >>> p = os.path.join(tempfile.mkdtemp(), "p.toml")
    >>> _ = open(p, "w").write('template = "Hi {name}"\\nmodel = "gpt-4o-mini"\\n')
    >>> load_prompt(p)["template"]
    'Hi {name}'
    """
    if not os.path.isfile(path):
        raise CliError(f"--prompt: file not found: {path}")
    try:
        with open(path, "rb") as fh:
            data = _toml().load(fh)
    except Exception as err:
        raise CliError(f"--prompt: {path} is not valid TOML: {err}") from err
    unknown = sorted(set(data) - set(PROMPT_KEYS))
    if unknown:
        close = suggest(unknown[0], PROMPT_KEYS)
        hint = f" (did you mean {close!r} for {unknown[0]!r}?)" if close else ""
        raise CliError(f"--prompt: {path} has unknown key(s) {', '.join(map(repr, unknown))}{hint}; "
                       f"rename or drop it; known keys: {', '.join(PROMPT_KEYS)}")
    if not isinstance(data.get("params", {}), dict):
        raise CliError(f"--prompt: params in {path} must be a table of request parameters, got "
                       f"{data['params']!r}; write it as a [params] section with lines such as temperature = 0.2")
    return data


def _param(text: str) -> tuple:
    if "=" not in text:
        raise CliError(f"--param expects KEY=VALUE (JSON value), got {text!r}")
    key, value = text.split("=", 1)
    try:
        return key, json.loads(value)
    except json.JSONDecodeError:
        return key, value


def map_options(args: argparse.Namespace) -> Dict[str, Any]:
    """Merge the prompt file and the flags (flags win) into ``map`` arguments."""
    opts: Dict[str, Any] = load_prompt(args.prompt) if args.prompt else {}
    schema_from = f"schema in --prompt {args.prompt}"
    params = dict(opts.pop("params", {}) or {})
    if args.template is not None:
        opts["template"] = args.template
    if args.system is not None:
        opts["system"] = args.system
    if args.model is not None:
        opts["model"] = args.model
    if args.images is not None:
        opts["images"] = args.images
    if args.backend is not None:
        opts["backend"] = args.backend
    if args.endpoint is not None:
        opts["endpoint"] = args.endpoint
    if args.max_cost is not None:
        opts["max_cost"] = check("max_cost", args.max_cost, label="--max-cost")
    if args.name is not None:
        opts["name"] = args.name
    if args.schema is not None:
        if not os.path.isfile(args.schema):
            raise CliError(f"--schema: file not found: {args.schema}")
        try:
            with open(args.schema) as fh:
                opts["schema"] = json.load(fh)
            schema_from = f"--schema {args.schema}"
        except json.JSONDecodeError as err:
            raise CliError(f"--schema: {args.schema} is not valid JSON: {err}") from err
    if args.json:
        opts["json"] = True
    if args.raw_column is not None:
        opts["raw_column"] = args.raw_column
    for p in args.param or []:
        k, v = _param(p)
        params[k] = v
    if "template" not in opts:
        raise CliError("a template is required: --template 'Text with {column}' or a --prompt file with template = ...")
    schema, as_json = opts.pop("schema", None), opts.pop("json", False)
    if schema is not None:
        from .core.parsing import response_format

        response_format(schema, argument=schema_from)  # a malformed schema fails here, naming its source
    if schema is not None and as_json:
        raise CliError("--json and --schema (or schema in the prompt file) exclude each other; pick one")
    opts["response_format"] = schema if schema is not None else ("json" if as_json else None)
    opts.update(params)
    return opts


def result_columns(df, template: str, opts: Dict[str, Any]) -> list:
    """The columns ``map`` will add to ``df`` for these options (checked as ``map`` checks them)."""
    from .core.spec import MapSpec

    spec_args = {k: opts[k] for k in SPEC_ARGUMENTS if k in opts}
    return MapSpec.build(template, columns=list(df.columns), **spec_args).new_columns()


def cmd_map(args: argparse.Namespace) -> int:
    import pdbatch  # noqa: F401  (registers .llm)

    if args.limit is not None and args.limit < 1:
        raise CliError(f"--limit must be a whole number >= 1 (the rows to run), got {args.limit}; "
                       f"leave it out to run every row")
    if args.poll_interval is not None:
        check("poll_interval", args.poll_interval, label="--poll-interval")
    out_path = args.out or os.path.splitext(os.path.basename(args.input))[0] + ".llm.parquet"
    kind = check_out(out_path, input_path=args.input)
    opts = map_options(args)
    df = read_frame(args.input, args.limit)
    template = opts.pop("template")
    check_writable(df, result_columns(df, template, opts), out_path, kind)
    if args.poll_interval is not None:
        opts["poll_interval"] = args.poll_interval
    out = df.llm.map(template, overwrite=args.overwrite, progress=not args.quiet, **opts)
    write_frame(out, out_path, kind)
    info = out.attrs.get("pdbatch", {})
    counts = info.get("counts", {})
    print(
        f"wrote {out_path}: {len(out)} rows, {counts.get('succeeded', 0)} answered, "
        f"{counts.get('failed', 0)} failed, {counts.get('skipped', 0)} skipped; {counts.get('sent', 0)} requests sent "
        f"by this run, {counts.get('cached', 0)} rows from the cache or an earlier run (backend {info.get('backend')}, job "
        f"{info.get('job_id')})",
        file=sys.stderr,
    )
    return 0


def _serve_options(args: argparse.Namespace) -> tuple[str, Optional[float]]:
    """The data directory and the retention (seconds) of ``pdbatch serve``, checked."""
    from .job.store import pdbatch_home
    from .server.durable import parse_duration

    retention = None
    if args.retention is not None:
        try:
            retention = parse_duration(args.retention)
        except ValueError as err:
            raise CliError(f"--retention: {err}") from err
    if args.upstream is None and (args.rpm, args.tpm, args.max_concurrency, args.model_map,
                                  args.upstream_key_env) != (None,) * 5:
        raise CliError("--rpm, --tpm, --max-concurrency, --model-map and --upstream-key-env go with --upstream URL")
    if args.upstream is not None and args.engine not in (None, "upstream"):
        raise CliError(f"--upstream answers with the upstream server: leave out --engine {args.engine}")
    if args.upstream is not None and not args.upstream.startswith(("http://", "https://")):
        raise CliError(f"--upstream: give the server's OpenAI base URL, e.g. http://127.0.0.1:8000/v1, "
                       f"not {args.upstream!r}")
    if any(v is not None and not 0 < v < float("inf") for v in (args.rpm, args.tpm)) or \
            args.max_concurrency is not None and args.max_concurrency < 1:
        raise CliError("--rpm and --tpm must be > 0 and --max-concurrency at least 1")
    if args.latency is not None and (args.engine != "echo" or not args.latency >= 0):
        raise CliError("--latency: give seconds >= 0, with --engine echo (the local model's own speed is "
                       "its latency)")
    data_dir = os.path.abspath(os.path.expanduser(args.data_dir or os.path.join(pdbatch_home(), "serve")))
    return data_dir, retention


def cmd_serve(args: argparse.Namespace) -> int:
    try:
        from .server import BatchServer
    except ImportError as err:
        raise CliError(f"pdbatch serve needs the server extra: pip install 'pdbatch[server]' ({err})") from err
    from .server.durable import TERMINAL

    data_dir, retention = _serve_options(args)
    if args.upstream is not None:
        from .server.upstream import UpstreamEngine, parse_model_map

        try:
            model_map = parse_model_map(args.model_map)
        except ValueError as err:
            raise CliError(f"--model-map: {err}") from err
        engine = UpstreamEngine(args.upstream, api_key_env=args.upstream_key_env or "OPENAI_API_KEY", rpm=args.rpm,
                                tpm=args.tpm, max_concurrency=args.max_concurrency or 16, model_map=model_map)
        limits = "".join(f", {value:g} {unit}" for value, unit in ((engine.limiter.rpm, "rpm"),
                                                                    (engine.limiter.tpm, "tpm")) if value)
        args.engine = (f"upstream {args.upstream} (key from ${engine.api_key_env}: "
                       f"{'set' if engine.has_key else 'not set, none sent'}, max {engine.concurrency} calls at once"
                       f"{limits})")
    elif args.engine in (None, "local"):
        from .local_model.model import default_model_path, get_pool

        args.engine = "local"
        engine = get_pool(args.model or default_model_path())
    else:
        from .server.engines import SlowEcho, echo_engine

        engine = SlowEcho(args.latency) if args.latency else echo_engine
    if not args.quiet:  # the request log: one line per request on stderr
        from .server.gate import request_log

        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s %(message)s", datefmt="%H:%M:%S"))
        request_log.addHandler(handler)
        request_log.setLevel(logging.INFO)
    srv = BatchServer(engine=engine, host=args.host, port=args.port, data_dir=data_dir, access_log=not args.quiet,
                      retention=retention)
    resumed = sum(b["status"] not in TERMINAL for b in srv.batches.values())
    kept = f"kept for {args.retention} after they end" if retention else "kept until deleted"
    if args.port == 0:  # the port is known once bound; otherwise the banner comes before any request line
        srv.start()
    print(f"pdbatch serve: engine {args.engine}; point clients at base_url={srv.base_url}; data in {data_dir} "
          f"({len(srv.files)} files, {len(srv.batches)} batches, {resumed} resumed; batches {kept})",
          file=sys.stderr, flush=True)
    srv.serve_forever()
    if args.upstream is not None:
        engine.close()
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``pdbatch`` command."""
    p = argparse.ArgumentParser(
        prog="pdbatch",
        description="Enrich a table with LLM output: OpenAI Batch API (half price), or a local model offline.",
        epilog="Examples:\n"
        "  pdbatch map data/movies.csv --prompt data/prompts/movies.toml --out movies.parquet\n"
        "  pdbatch map reviews.parquet --template 'Sentiment of: {text}' --model gpt-4o-mini --out out.csv\n"
        "  pdbatch serve --engine local --port 8000\n"
        "  pdbatch jobs\n"
        "  pdbatch status JOB_ID\n"
        "  pdbatch result JOB_ID --out out.parquet\n"
        "  pdbatch cancel JOB_ID",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    m = sub.add_parser(
        "map",
        help="run a prompt over every row of a CSV/Parquet/JSONL file and write the answers as new columns",
        description="Read INPUT, render every row through the template, run the requests (Batch API with "
        "OPENAI_API_KEY set, or Anthropic's Message Batches with ANTHROPIC_API_KEY and a claude-* --model, else the "
        "local model), and write the frame with the new columns to --out.",
    )
    m.add_argument("input", metavar="INPUT", help="a .csv, .parquet or .jsonl file")
    m.add_argument("--prompt", metavar="FILE.toml", help="prompt file with template, system, schema, model, images, params")
    m.add_argument("--template", "-t", metavar="T", help="the prompt template; {column} fields name columns")
    m.add_argument("--system", "-s", metavar="S", help="system message (may use {column} fields)")
    fmt = m.add_mutually_exclusive_group()
    fmt.add_argument("--json", action="store_true", help="JSON mode: answers are JSON objects, one column per key")
    fmt.add_argument("--schema", metavar="FILE.json", help="a JSON Schema file: strict structured output, validated")
    m.add_argument("--raw-column", metavar="NAME", help="also write each row's raw answer text (failed rows "
                   "included) to column NAME")
    m.add_argument("--images", metavar="COL", help="column of image URLs or local paths (vision)")
    m.add_argument("--model", "-m", metavar="M", help="model name, e.g. gpt-4o-mini (a .gguf path for local)")
    m.add_argument("--backend", "-b", choices=["batch", "realtime", "local"], help="default: batch with OPENAI_API_KEY, else local")
    m.add_argument("--out", "-o", metavar="OUTPUT", help="output file (.parquet, .csv or .jsonl); default INPUT.llm.parquet")
    m.add_argument("--param", action="append", metavar="KEY=VALUE", help="request parameter, e.g. temperature=0.2 (repeatable)")
    m.add_argument("--name", metavar="NAME", help="what pdbatch jobs calls the job (default: the template's "
                   "first words)")
    m.add_argument("--endpoint", choices=["chat", "responses"], help="the OpenAI API to send (default chat completions)")
    m.add_argument("--max-cost", type=float, metavar="USD", help="refuse the run when its estimate is over USD dollars; "
                   "realtime also stops sending once its spend reaches it")
    m.add_argument("--limit", type=int, metavar="N", help="only the first N rows (a quick try)")
    m.add_argument("--overwrite", action="store_true", help="replace output columns that already exist")
    m.add_argument("--poll-interval", type=float, metavar="SECONDS", help="first pause between Batch API polls (default 2)")
    m.add_argument("--quiet", "-q", action="store_true", help="no progress bar")
    m.set_defaults(func=cmd_map)

    s = sub.add_parser(
        "serve",
        help="run a local OpenAI-compatible Files + Batches API server",
        description="Serve the Files + Batches API (and /v1/chat/completions) on this machine, answered by an "
        "engine: 'local' runs the shipped SmolLM2 model, 'echo' repeats each prompt (for tests).",
    )
    s.add_argument("--engine", choices=["local", "echo"], help="what answers requests (default local; "
                   "--upstream sends them to another server)")
    s.add_argument("--upstream", metavar="URL", help="answer every request (batch lines included) with this "
                   "OpenAI-compatible server's realtime endpoints, e.g. http://127.0.0.1:8000/v1 (vLLM, llama.cpp, "
                   "Ollama, LM Studio); each answer is stored as it arrives")
    s.add_argument("--upstream-key-env", metavar="VAR", help="environment variable holding the upstream's API key "
                   "(default OPENAI_API_KEY); the key is never written to the data directory or the log")
    s.add_argument("--rpm", type=float, metavar="N", help="with --upstream: requests per minute to stay under "
                   "(the upstream's x-ratelimit-* headers lower it)")
    s.add_argument("--tpm", type=float, metavar="N", help="with --upstream: tokens per minute to stay under "
                   "(prompt estimate plus max tokens per call; the upstream's x-ratelimit-* headers lower it)")
    s.add_argument("--max-concurrency", type=int, metavar="N", help="with --upstream: calls in flight at most "
                   "(default 16)")
    s.add_argument("--model-map", action="extend", nargs="+", metavar="SERVED=UPSTREAM", help="with --upstream: "
                   "send requests for model SERVED as model UPSTREAM (repeatable)")
    s.add_argument("--model", metavar="FILE.gguf", help="a GGUF model for --engine local (default: SmolLM2-135M)")
    s.add_argument("--host", default="127.0.0.1", help="interface to bind (default 127.0.0.1: this machine only)")
    s.add_argument("--port", type=int, default=8000, help="TCP port (default 8000)")
    s.add_argument("--data-dir", metavar="DIR", help="where files, batches and answers are stored as they happen; "
                   "a server started again on it resumes unfinished batches (default: $PDBATCH_HOME/serve)")
    s.add_argument("--retention", metavar="DURATION", help="delete a finished batch and its files this long after it "
                   "ended: seconds or a number with a unit s, m, h, d, w (e.g. 7d; default: keep until deleted)")
    s.add_argument("--latency", type=float, metavar="SECONDS", help="with --engine echo: sleep this long before each "
                   "answer, to test clients against slow batches")
    s.add_argument("--quiet", "-q", action="store_true", help="no request log (by default one line per request "
                   "on stderr: time, method, path, status, milliseconds)")
    s.set_defaults(func=cmd_serve)

    env = " Batch jobs reach the API through OPENAI_API_KEY (and OPENAI_BASE_URL) in the environment."
    j = sub.add_parser("jobs", help="list the jobs in the job store, newest first",
                       description="List the jobs in $PDBATCH_HOME's store: id, name, created (UTC), backend, "
                       "model, rows, state (with the batch statuses last seen), answers done and failed, and "
                       "requests sent but not answered (cancelled, expired or still running). Needs no API key.")
    j.add_argument("--limit", "-n", type=int, default=20, metavar="N", help="at most N jobs (default 20)")
    j.set_defaults(func=cmd_jobs)
    st = sub.add_parser("status", help="a job's state, counts, batch ids, tokens and estimated cost",
                        description="Show one job: state, request counts, batch ids, tokens paid and tokens "
                        "from the answer cache, and the estimated cost (see pdbatch.pricing; unknown on a server "
                        "other than OpenAI's API unless you set a price). A finished job is read from the store, "
                        "offline; an unfinished one is refreshed first." + env)
    st.add_argument("id", metavar="ID", help="a job id, as pdbatch jobs lists them")
    st.add_argument("--json", action="store_true", help="print the status as JSON")
    st.set_defaults(func=cmd_status)
    c = sub.add_parser("cancel", help="cancel a running job (answers already made are kept)",
                       description="Cancel the job's batches that are still running; finished answers are kept "
                       "and pdbatch result writes them." + env)
    c.add_argument("id", metavar="ID", help="a job id")
    c.set_defaults(func=cmd_cancel)
    r = sub.add_parser("result", help="wait for a job if needed and write its frame to a file",
                       description="Wait for the job (with a progress bar unless -q), join its answers onto the "
                       "stored frame and write it (.parquet, .csv or .jsonl by suffix)." + env)
    r.add_argument("id", metavar="ID", help="a job id")
    r.add_argument("--out", "-o", metavar="OUTPUT", help="output file (.parquet, .csv or .jsonl); default ID.parquet")
    r.add_argument("--overwrite", action="store_true", help="replace output columns that already exist")
    r.add_argument("--timeout", type=float, metavar="SECONDS", help="give up waiting after this long (the job goes on)")
    r.add_argument("--poll-interval", type=float, metavar="SECONDS", help="first pause between Batch API polls (default 2)")
    r.add_argument("--quiet", "-q", action="store_true", help="no progress bar")
    r.set_defaults(func=cmd_result)
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point of the ``pdbatch`` console script; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return args.func(args)
    except (CliError, InputError, OptionError) as err:
        print(f"pdbatch: error: {err}", file=sys.stderr)
        return 2
    except PdbatchError as err:
        print(f"pdbatch: error: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("pdbatch: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
