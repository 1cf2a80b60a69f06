"""The ETL timer: load new and changed opportunities into PostgreSQL for Power BI."""

import logging

import azure.functions as func

from shared.etl import pipeline

bp = func.Blueprint()
log = logging.getLogger(__name__)


@bp.timer_trigger(schedule="%ETL_SCHEDULE%", arg_name="timer", run_on_startup=False)
def run_etl(timer: func.TimerRequest) -> None:
    if timer.past_due:
        log.info("The ETL timer is past due; running now.")
    pipeline.run()  # logs what it did
