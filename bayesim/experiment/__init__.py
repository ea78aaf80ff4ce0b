"""Experiments: a validated config (`load_experiment`) run end to end (`run_experiment`)."""
from bayesim.experiment.config import ExperimentConfig, load_experiment  # noqa: F401
from bayesim.experiment.runner import result_table, run_experiment  # noqa: F401
