"""The operator surface over HTTP: health, Prometheus metrics, a REST API and a dashboard.

It runs in a process of its own (:mod:`supervisor.http.process` starts, watches and stops it;
:mod:`supervisor.http.server` is its entry point), so the supervisor's loop never waits for it.
Importing this package loads no web library: the supervisor imports ``process`` only.
"""
