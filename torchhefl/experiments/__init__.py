"""The paper's experiments (Guo et al., section 5) as sweeps, their runner, figures and report.

``python -m train.experiments`` drives them; the figures need matplotlib
(``pip install 'torchhefl[experiments]'``).
"""

from torchhefl.experiments.runner import ExperimentSettings, Job, estimate_seconds, plan, rows_of, run_job, run_jobs
from torchhefl.experiments.sweeps import PAPER_BASE, PAPER_CLAIMS, SWEEPS, Setting, Sweep, get_sweeps

__all__ = [
    "PAPER_BASE",
    "PAPER_CLAIMS",
    "SWEEPS",
    "ExperimentSettings",
    "Job",
    "Setting",
    "Sweep",
    "estimate_seconds",
    "get_sweeps",
    "plan",
    "rows_of",
    "run_job",
    "run_jobs",
]
