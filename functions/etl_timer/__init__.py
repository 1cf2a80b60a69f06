"""The ETL timer: load new and changed opportunities into PostgreSQL for Power BI, then the
model step: train when due, score the open opportunities."""

import logging

import azure.functions as func

from shared.etl import pipeline
from shared.model import jobs

bp = func.Blueprint()
log = logging.getLogger(__name__)


@bp.timer_trigger(schedule="%ETL_SCHEDULE%", arg_name="timer", run_on_startup=False)
def run_etl(timer: func.TimerRequest) -> None:
    if timer.past_due:
        log.info("The ETL timer is past due; running now.")
    loaded = pipeline.run()  # logs what it did
    if loaded.status == "succeeded":
        jobs.after_load(loaded.upserted)
