"""`python -m snakemake` for tests/test_slurm.py, with the SLURM executor's status polling capped.

snakemake-executor-plugin-slurm adds 10 s to its status-check interval after every check in
which no job finished (up to 180 s), which is right for a shared cluster's slurmctld and slow
for a one-node test cluster: a job that ends after a few minutes is noticed up to a minute
late, and the SLURM tests wait for many such jobs. This launcher caps the interval at
POLL_CAP_S (one `squeue` every 2 s on the local test cluster) and changes nothing else: the
same Snakemake, profile, plugin and jobs. Users' runs (profiles/slurm) keep the plugin's own
back-off.

Usage: python tests/slurm_snakemake.py <snakemake arguments>
"""

from __future__ import annotations

import os

from snakemake_interface_executor_plugins.executors.remote import RemoteExecutor

POLL_CAP_S = float(os.environ.get("MMLU_SLURM_POLL_CAP_S", "2"))

_prop = RemoteExecutor.next_seconds_between_status_checks


def _capped(self, value):
    _prop.fset(self, value if value is None else min(value, POLL_CAP_S))


RemoteExecutor.next_seconds_between_status_checks = property(_prop.fget, _capped)

if __name__ == "__main__":
    from snakemake.cli import main

    main()
