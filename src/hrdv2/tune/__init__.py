"""Hyper-parameter search for hrdv2's workflows (``hrdv2 tune``), with Optuna.

A task (:class:`TrainTask`, :class:`UnsupervisedTask`) owns a search space over the real
command's options and scores them on a labelled folder; :func:`run_study` runs the trials and
records quality, seconds and peak memory; the outputs are a trials table, a Pareto plot of
quality against cost and the best options as a ``--config`` file.
"""

from hrdv2.tune.memory import PeakMemory
from hrdv2.tune.study import TrialRecord, best_config, best_trial, pareto_front, plot_pareto, run_study, trials_csv
from hrdv2.tune.tasks import TrainTask, UnsupervisedTask

__all__ = ["PeakMemory", "TrainTask", "TrialRecord", "UnsupervisedTask", "best_config", "best_trial", "pareto_front",
           "plot_pareto", "run_study", "trials_csv"]
