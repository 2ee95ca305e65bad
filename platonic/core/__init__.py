"""The engine: alignment metrics, the best-over-layer-pairs search, calibration against chance,
and the generic statistics (OLS slope, Spearman rho and its bootstrap)."""
