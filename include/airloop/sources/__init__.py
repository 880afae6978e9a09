"""Source adapters: code that fills the landing layout of :mod:`airloop.ingest` from somewhere else.

The generic ``files`` source needs no adapter: an upstream system writes the files itself.
"""
