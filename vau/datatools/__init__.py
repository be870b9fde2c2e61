"""Offline data tools: what ``python -m vau data ...`` runs besides training.

- :mod:`vau.datatools.reflection`: SRVAU-R1 reflection chains for the reflect tasks (``data reflect``; the template
  builder, also applied in memory by the DataModule when ``data.reflect`` is set).
- :mod:`vau.datatools.teacher`: the ``teacher`` builder, a chat model (:mod:`vau.chat`) writing the reflections.

``data stats`` and ``data check`` read data the way the DataModule does and live beside it
(:mod:`vau.datamodules.inventory`). The demo mini-benchmark generator (``data generate``) sits in the data layer (:mod:`vau.data.synthetic`), since the
tasks' tokenizer corpus reads its vocabulary.
"""
