"""Alerts: telling people when something breaks.

An alert is born in the supervisor's loop (:mod:`.book`), from an event it is about to write:
the book matches the event against the ``[[alerts]]`` entries and returns outbox rows, which
the batch writer commits in the same transaction as the event (:class:`.records.AlertRecord`,
table ``alert_outbox``). Once committed, the rows go to the sender (:mod:`.sender`): one thread
per destination, so a slow or dead receiver only delays its own alerts, that delivers them with
retries and backoff and records each as ``delivered`` or ``failed``. Pending rows survive a
restart: the next sender picks them up from the store.
"""
