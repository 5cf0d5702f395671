"""Workflows: batches of items pushed through ordered step actors, in waves (issue 14).

:mod:`.config` parses ``[[workflows]]``; :mod:`.records` holds what is stored;
:mod:`.engine` is the per-workflow-run state machine; :mod:`.book` ties the engines to the
run book and the store; :mod:`.replay` rebuilds a run's state from its snapshot and events.
"""
