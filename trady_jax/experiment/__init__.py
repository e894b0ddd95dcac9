"""Experiments from a ``Config``: checks, data, network and ranking (loaded, or computed by
``rank_layers``), a run built and trained to its ``final.json``, and the command line the scripts
in ``experiments/`` share."""

from trady_jax.experiment.assemble import build_run, default_workdir, run
from trady_jax.experiment.checks import check_config, check_scheme_budget
from trady_jax.experiment.cli import USER_ERRORS, exit_status
from trady_jax.experiment.inputs import calibration_batches, open_data
from trady_jax.experiment.network import load_model, load_network, load_ranking
from trady_jax.experiment.rank import rank_layers

__all__ = ["build_run", "calibration_batches", "check_config", "check_scheme_budget",
           "default_workdir", "exit_status", "load_model", "load_network", "load_ranking",
           "open_data", "rank_layers", "run", "USER_ERRORS"]
