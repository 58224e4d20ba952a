"""The zoo tooling, above the library: it trains, evaluates, publishes and documents the zoo's models.

- :mod:`lipzoo.zoo.training`: the training API in one import, from :mod:`~lipzoo.zoo.recipe`
  (recipes, the paper's loss), :mod:`~lipzoo.zoo.checkpoint` (checkpoints, the run lock),
  :mod:`~lipzoo.zoo.trainer` (the resumable trainer) and :mod:`~lipzoo.zoo.lrsearch` (budgets,
  the learning-rate search);
- :mod:`lipzoo.zoo.evaluation`, :mod:`lipzoo.zoo.publish`: evaluate a finished run, the publish
  gate, publish and push model folders;
- :mod:`lipzoo.zoo.cards` (with :mod:`~lipzoo.zoo.card_sections`): model cards and the cards
  index, rendered from ``config.json``;
- :mod:`lipzoo.zoo.bench` (with :mod:`~lipzoo.zoo.measure`, :mod:`~lipzoo.zoo.bench_results`),
  :mod:`lipzoo.zoo.plots`: speed and memory benchmarks and the pictures;
- :mod:`lipzoo.zoo.convert` (with :mod:`~lipzoo.zoo.paper_release`): the importer of the paper's
  released checkpoints.

These modules import the library (``lipzoo.registry``, ``lipzoo.hub``, ``lipzoo.factory``,
``lipzoo.certify``, ...); nothing in the library imports them. The ``lipzoo`` command
(:mod:`lipzoo.cli`) sits on top of both.
"""
