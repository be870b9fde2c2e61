"""What a user runs on outputs: ``predict`` (replies of a model), ``score`` (metrics against annotations), the
report (tables, plots, per-clip records, HTML page) and ``judge`` (free text scored by a judge model)."""
