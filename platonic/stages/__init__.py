"""The stages, each a settings dataclass and a `run`: extract (features), measure (alignment),
and the report (study table, statistics, summary, plots). No stage reads a command line."""
