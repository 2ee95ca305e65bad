"""The MM-IMDb alignment-performance study: data, probes, alignment and correlation plots."""
