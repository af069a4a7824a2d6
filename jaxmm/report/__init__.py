"""Figures and the per-run report, made only from files the run wrote into its workdir."""
