"""rules stage of gridwatch: detections in, graded alert changes out.

``rules.load`` reads and checks the rules file (``default_rules.toml``; ``docs/rules.md``),
``rules.table`` compiles it against a registry, ``rules.engine.RulesEngine`` applies it to
columnar ``Detections`` (for-duration, hysteresis, dedup, silences, inhibition, area
correlation). Storage and notification of the resulting changes live in ``alerts``.
"""
