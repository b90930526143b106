"""Text-to-video search over an index built once from a checkpoint and a shard split.

``search.index`` builds and reads the index folder, ``search.engine`` answers queries (two stages: global
candidates, exact re-rank with the model's test-time similarity, optional query-time hubness correction),
``search.server`` serves it over HTTP, ``search.cli`` holds ``nr-index`` and ``nr-search``.
"""
