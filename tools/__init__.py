"""Maintainers' tools that are not part of gfldet: `python -m tools.make_doc_images` redraws the
pictures of docs/insight.md from a trained work dir."""
