"""Code management: actor source versions, drift and auto-sync.

:mod:`~supervisor.code.records` holds the records and constants, :mod:`~supervisor.code.sync`
hashing, drift and version tags, :mod:`~supervisor.code.book` the supervisor's bookkeeping. Their
SQL lives with the other tables' in :mod:`supervisor.store.code`; the commands are in
:mod:`supervisor.cli.code`.
"""
