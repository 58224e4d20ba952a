"""The zoo tooling, above the library: it trains, evaluates, publishes and documents the zoo's models.

- :mod:`lipzoo.zoo.training`: recipes, the paper's loss and schedule, the resumable trainer;
- :mod:`lipzoo.zoo.publish`: evaluate a finished run, the publish gate, publish and push model folders;
- :mod:`lipzoo.zoo.cards`: model cards and the cards index, rendered from ``config.json``;
- :mod:`lipzoo.zoo.bench`, :mod:`lipzoo.zoo.plots`: speed and memory benchmarks and the pictures;
- :mod:`lipzoo.zoo.convert`: the importer of the paper's released checkpoints.

These modules import the library (``lipzoo.registry``, ``lipzoo.hub``, ``lipzoo.factory``,
``lipzoo.certify``, ...); nothing in the library imports them. The ``lipzoo`` command
(:mod:`lipzoo.cli`) sits on top of both.
"""
