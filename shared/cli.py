"""The ``salespredict`` command.

Every command reads the settings (environment over ``local.settings.json``). Where a server URL
is empty it uses the embedded servers of a running ``salespredict serve``, or starts its own for
the length of the command.
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import secrets
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import psycopg2
from pymongo.errors import PyMongoError
from redis.exceptions import RedisError

from shared.errors import SalesPredictError
from shared.settings import LOCAL_SETTINGS_FILE, Settings, load_settings, use_settings

EXAMPLE_SETTINGS = "local.settings.example.json"
KEY_SETTINGS = ("SALESPREDICT_FUNCTION_KEY", "SALESPREDICT_ADMIN_KEY")


def ensure_local_settings(path: Path = Path(LOCAL_SETTINGS_FILE)) -> None:
    """Create local.settings.json from the example, with random local keys, if it is missing."""
    if path.exists():
        return
    example = path.with_name(EXAMPLE_SETTINGS)
    if not example.exists():
        return
    data = json.loads(example.read_text(encoding="utf-8"))
    for name in KEY_SETTINGS:
        if not data["Values"].get(name):
            data["Values"][name] = secrets.token_urlsafe(24)
    path.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    print(f"Created {path} from {example.name} with new local function keys.")


@contextmanager
def app_settings() -> Iterator[Settings]:
    """The settings, with every server reachable, installed as the process's settings."""
    from shared.devhost.servers import attached

    with attached(load_settings()) as settings:
        use_settings(settings)
        yield settings


def cmd_serve(args: argparse.Namespace) -> None:
    from shared.devhost.host import LocalHost

    ensure_local_settings()
    with app_settings() as settings:
        from function_app import app
        from shared.seed import seed_demo_if_empty

        demo = seed_demo_if_empty(settings.demo_opportunities)
        if demo is not None:
            print(f"First start: demo history seeded. {demo.report()}")
        host = LocalHost(app, settings)
        print("Loading the reporting database and the model (the ETL timer, run once now)...")
        try:
            host.run_timer("run_etl", "Run on startup of the local host")
        except Exception as exc:  # the host still serves; the timer retries on its schedule
            print(f"The first ETL run failed ({exc}); see the log above.")
        base = host.start(args.host, args.port)
        print(f"\nsalespredict is serving {len(host.http)} HTTP function(s) at {base}/api/")
        for fn in sorted(host.http.values(), key=lambda f: f.route):
            print(
                f"  {' '.join(fn.methods) or 'ANY':<10} {base}/api/{fn.route:<28} ({fn.auth_level})"
            )
        for name, timer in host.timers.items():
            print(f"  timer      {name}: '{timer.schedule}', next {host.next_fire(name):%H:%M:%S}")
        print(f"\n  MongoDB     {settings.mongodb_uri}")
        print(f"  PostgreSQL  {settings.postgres_dsn}")
        print(f"  Redis       {settings.redis_url}")
        print(f"\n  Function key: {settings.function_key}")
        print("  (send it as the x-functions-key header or the code query parameter)")
        print(f"  Admin key:    {settings.admin_key}")
        print(f"\n  try: curl -H 'x-functions-key: {settings.function_key}' {base}/api/catalogs")
        print("\nPress Ctrl-C to stop.", flush=True)
        stop = threading.Event()
        signal.signal(signal.SIGTERM, lambda *_: stop.set())
        try:
            stop.wait()
        except KeyboardInterrupt:
            pass
        finally:
            print("Stopping...", flush=True)
            host.stop()


def cmd_import_csv(args: argparse.Namespace) -> None:
    from tqdm import tqdm

    from shared.importer import Mapping, import_rows

    mapping = Mapping.load(args.mapping) if args.mapping else None
    path: Path = args.file
    try:
        with path.open("rb") as lines:
            total = max(0, sum(1 for _ in lines) - 1)  # for the progress bar
        handle = path.open(newline="", encoding="utf-8-sig")
    except OSError as exc:
        raise SalesPredictError(f"Cannot read {path}: {exc.strerror}") from exc
    with app_settings(), handle, tqdm(total=total, unit="row", desc="import") as bar:
        summary = import_rows(handle, mapping, progress=bar)
    print(summary.report())
    if args.rejects and summary.rejected:
        with args.rejects.open("w", newline="", encoding="utf-8") as out:
            writer = csv.writer(out)
            writer.writerow(["line", "external_id", "reason"])
            writer.writerows((r.line, r.external_id, r.reason) for r in summary.rejected)
        print(f"Rejected rows written to {args.rejects}")


def cmd_seed(args: argparse.Namespace) -> None:
    from tqdm import tqdm

    from shared.seed import seed

    with app_settings(), tqdm(total=args.n, unit="opportunity", desc="seed") as bar:
        summary = seed(args.n, args.seed, progress=bar.update)
    print(summary.report())


def cmd_catalog(args: argparse.Namespace) -> None:
    from shared import catalogs
    from shared.opportunities import collections

    with app_settings():
        db = collections().db
        if args.action == "add":
            try:
                members = catalogs.add_codes(db, args.field, args.codes)
            except KeyError as exc:
                raise SalesPredictError(str(exc.args[0])) from exc
            print(f"{args.field}: {', '.join(members)}")
        else:
            for name, codes in sorted(catalogs.load(db).items()):
                print(f"{name}: {', '.join(sorted(codes))}")


def cmd_migrate(args: argparse.Namespace) -> None:
    from shared.etl.migrate import migrate
    from shared.stores import postgres

    with app_settings(), postgres.connection() as conn:
        applied = migrate(conn)
    names = ", ".join(f"{m.version:04d}_{m.name}" for m in applied)
    print(f"Applied {names}." if applied else "The database is up to date.")


def cmd_etl(args: argparse.Namespace) -> None:
    from tqdm import tqdm

    from shared.etl import pipeline
    from shared.model import jobs

    with app_settings():
        with tqdm(total=pipeline.pending(args.full), unit="doc", desc="etl") as bar:
            result = pipeline.run(args.full, on_batch=lambda _, n: bar.update(n))
        print(result.summary())
        if result.status == "succeeded":
            print(jobs.after_load(result.upserted).summary())


def cmd_train(args: argparse.Namespace) -> None:
    from tqdm import tqdm

    from shared.model import jobs

    steps = ("reading closed deals", "fitting gradient_boosting", "fitting logistic_regression",
             "measuring feature importance")  # fmt: skip
    with app_settings(), tqdm(total=len(steps), desc="train", unit="step") as bar:

        def progress(step: str) -> None:
            bar.set_postfix_str(step)
            bar.update(1)

        result = jobs.train(seed=args.seed, progress=progress)
    print(result.summary())
    print(json.dumps(result.metrics))


def cmd_models(args: argparse.Namespace) -> None:
    from shared.model import registry
    from shared.stores import postgres

    with app_settings():
        if args.action == "activate":
            registry.activate(args.version)
            print(f"Model version {args.version} is active.")
        elif args.action == "rollback":
            print(f"Rolled back: model version {registry.rollback()} is active.")
        else:
            with postgres.connection() as conn:
                cards = registry.cards(conn)
            if not cards:
                print("No model yet: run `salespredict etl` or `salespredict train`.")
            for card in cards:
                metrics = card["metrics"]
                print(
                    f"{'*' if card['active'] else ' '} v{card['version']:<4} "
                    f"{card['created_at']:%Y-%m-%d %H:%M}  {card['kind']:<20} "
                    f"roc_auc {metrics.get('roc_auc', '-')!s:<7} n_train {metrics['n_train']:<6} "
                    f"{card['decision']}"
                )


def cmd_evaluate(args: argparse.Namespace) -> None:
    from tqdm import tqdm

    from shared.model.evaluate import FOLDS, evaluate_csv

    with tqdm(total=None if args.time else FOLDS, desc="evaluate", unit="fold",
              file=sys.stderr) as bar:  # fmt: skip
        result = evaluate_csv(
            args.csv, args.target, args.positive, args.negative, args.id, args.time,
            progress=bar.update,
        )  # fmt: skip
    for warning in result.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    print(json.dumps(result.metrics))


def cmd_powerbi(args: argparse.Namespace) -> None:
    from shared import powerbi

    with app_settings() as settings:
        args.out.write_text(powerbi.dumps(settings.postgres_dsn, args.mode), encoding="utf-8")
    print(f"Wrote {args.out}: open it in Power BI Desktop and pick the views of `reporting`.")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="salespredict", description="Capture opportunities and predict their outcome."
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = sub.add_parser("serve", help="run the function app locally on embedded servers")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=7071)
    serve.set_defaults(run=cmd_serve)

    imp = sub.add_parser("import-csv", help="bulk-load historical opportunities from a CSV file")
    imp.add_argument("file", type=Path)
    imp.add_argument("--mapping", type=Path, help="TOML file mapping CSV columns to fields")
    imp.add_argument("--rejects", type=Path, help="write rejected rows and reasons to this CSV")
    imp.set_defaults(run=cmd_import_csv)

    sed = sub.add_parser("seed", help="generate a dummy company history (through the service)")
    sed.add_argument("--n", type=int, default=2000, help="how many opportunities")
    sed.add_argument("--seed", type=int, default=0, help="random seed (same seed, same data)")
    sed.set_defaults(run=cmd_seed)

    mig = sub.add_parser("migrate", help="apply the reporting database's pending migrations")
    mig.set_defaults(run=cmd_migrate)

    etl = sub.add_parser(
        "etl",
        help="load new and changed opportunities into PostgreSQL, then train if due and score",
    )
    etl.add_argument("--full", action="store_true", help="rebuild the reporting tables")
    etl.set_defaults(run=cmd_etl)

    pbi = sub.add_parser("powerbi", help="write a Power BI connection file (.pbids)")
    pbi.add_argument("--out", type=Path, required=True, help="e.g. salespredict.pbids")
    pbi.add_argument("--mode", choices=["Import", "DirectQuery"], default="Import")
    pbi.set_defaults(run=cmd_powerbi)

    trn = sub.add_parser("train", help="train a model on the closed deals in PostgreSQL")
    trn.add_argument("--seed", type=int, default=0, help="random seed (same data, same model)")
    trn.set_defaults(run=cmd_train)

    mod = sub.add_parser("models", help="list the model versions, activate one, or roll back")
    mod_sub = mod.add_subparsers(dest="action", metavar="{list,activate,rollback}")
    mod_sub.add_parser("list", help="every version, newest first; * marks the active one")
    act = mod_sub.add_parser("activate", help="serve this version")
    act.add_argument("version", type=int)
    mod_sub.add_parser("rollback", help="serve the version that was active before this one")
    mod.set_defaults(run=cmd_models, action="list")

    ev = sub.add_parser("evaluate", help="train and evaluate on a CSV export; prints metrics")
    ev.add_argument("--csv", type=Path, required=True, help="the CSV file")
    ev.add_argument("--target", required=True, help="the outcome column")
    ev.add_argument("--positive", action="append", required=True, help="a winning value")
    ev.add_argument(
        "--negative",
        action="append",
        default=[],
        help="a losing value; other rows are dropped (default: all else loses)",
    )
    ev.add_argument("--id", action="append", default=[], help="an id column to drop")
    ev.add_argument("--time", help="a date column: evaluate on the newest 20%% instead of CV")
    ev.set_defaults(run=cmd_evaluate)

    cat = sub.add_parser("catalog", help="list or extend the catalogs of allowed codes")
    cat_sub = cat.add_subparsers(dest="action", required=True)
    cat_sub.add_parser("list", help="print every catalog")
    add = cat_sub.add_parser("add", help="add codes to a catalog")
    add.add_argument("field")
    add.add_argument("codes", nargs="+")
    cat.set_defaults(run=cmd_catalog)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    try:
        args.run(args)
    except (SalesPredictError, PyMongoError, psycopg2.Error, RedisError, OSError) as exc:
        parser.exit(2, f"salespredict: error: {type(exc).__name__}: {exc}\n")
    except subprocess.CalledProcessError as exc:
        output = (exc.stderr or b"").decode(errors="replace")[-1000:]
        parser.exit(2, f"salespredict: error: {exc}\n{output}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
