"""The pure core of pdbatch: plain functions over plain records.

Templates, custom ids, request bodies and JSONL lines, the one rule that
decides whether an answer is usable, parsing and validation, and the join.
Nothing here does I/O beyond files handed in, and nothing here imports from
pdbatch outside ``core/`` and :mod:`pdbatch.errors`.
"""
