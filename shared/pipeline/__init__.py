"""The WordPress pipeline's stages as plain code: ingest -> infer -> post-process -> publish.

The Dramatiq actors in ``workers/actors.py`` are thin: each reads its message's options and calls
one module here, so the logic is testable without a broker.  Stage documents are JSON objects:

* ingest gets ``{"title", "source", "hints"?}`` and returns the same, normalised;
* infer returns ``{"title", "draft", "model", "usage"}`` (the source is not carried further);
* post-process returns ``{"title", "html", "words", "model"}``;
* publish returns the post's reference (or, without a site, the archived article).
"""
