"""Protocols: how a task uses a channel (every method commlib runs on a task is implemented here).

* :mod:`commlib.protocols.games`: the coordination games, one batch of items per method.
* :mod:`commlib.protocols.questions`, :mod:`commlib.protocols.reasoning`: the reasoning benchmarks.
* :mod:`commlib.protocols.debate`: debate of two agents in text (``nld``) or in CIPHER messages.
* :mod:`commlib.protocols.series`: the sweep over n, how much of A's state a method sends.
"""
