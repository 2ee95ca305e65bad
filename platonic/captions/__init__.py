"""Stage 1: captions rewritten at 10 levels of uniqueness by an LLM, validated and resumable.

Modules: `prompt` (what is asked), `client` (one request with retries), `checks` (is a reply
usable), `sources` (where captions come from), `store` (durable results), `similarity`
(sentence-embedding cosines), `generate` (the run), `validate` (checking an existing file). The
file format is read and written by `platonic.io.published_captions`. The command line is
`perturbed/create_dataset.py`, over `generate.main`.
"""
