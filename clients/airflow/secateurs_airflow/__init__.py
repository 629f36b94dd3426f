"""Apache Airflow integration for secateurs: `SecateursHook` (a Client from an Airflow
connection), `SecateursCompressOperator` (submit a job, defer while it runs, fetch its
artifacts) and `SecateursJobTrigger` (polls GetJob in the triggerer)."""

from secateurs_airflow.hooks import SecateursHook
from secateurs_airflow.operators import SecateursCompressOperator
from secateurs_airflow.triggers import SecateursJobTrigger

__all__ = ["SecateursHook", "SecateursCompressOperator", "SecateursJobTrigger"]
