"""Prefect flows of mm-mo: the search pipeline, read top to bottom in :mod:`flows.search`."""
