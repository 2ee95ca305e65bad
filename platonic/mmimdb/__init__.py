"""The MM-IMDb alignment-performance study: data (dataset, fixture, genres, layout, pairing),
features (extract_splits), probes (probe, performance), alignment (study_alignment), the
correlation (report, correlation_plots) and the command lines (commands, model_sets)."""
