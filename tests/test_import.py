"""import-csv: the capture validation in bulk, idempotent re-runs, clear reports."""

from __future__ import annotations

import csv
import io
import subprocess
import sys

import pytest

from shared.importer import ImportFileError, Mapping, import_rows
from tests.conftest import SEED_CSV, SEED_MAPPING

HEADER = (
    "numero_opportunidad,cliente,unidad_negocio,etapas,tipos,acv,tcv,margen_ganancia,regiones,"
    "territorios,industrias,fecha_creacion_oportunidad,fecha_cierre_oportunidad,edad_oferta,"
    "lead_source,numero_vendedor"
)
ROWS = [
    "OP-00000,CL-01169,BU-05,Lost,TY-04,476458.92,943194.18,0.06,RE-02,TE-15,IN-23,2021-08-17,2022-02-06,173.0,LS-06,NV-4",
    "OP-00001,CL-00808,BU-05,Won,TY-00,8715.31,8715.31,0.07,RE-02,TE-01,IN-37,2020-07-23,2020-07-23,0.0,LS-06,NV-4",
    "OP-00002,CL-00234,BU-05,S3,TY-04,140992.94,140992.94,0.19,RE-01,TE-15,IN-10,2021-06-21,2021-12-11,173.0,LS-14,NV-1",
    "OP-00003,CL-00808,BU-05,Won,TY-00,9000.00,1333.11,0.19,RE-02,TE-00,IN-55,2020-08-09,2020-08-09,0.0,LS-11,NV-0",
    "OP-00004,CL-00808,BU-05,Won,TY-00,1333.11,1333.11,0.19,RE-77,TE-00,IN-55,2020-08-09,2020-08-09,0.0,LS-11,NV-0",
    "OP-00001,CL-00808,BU-05,Won,TY-00,8715.31,8715.31,0.07,RE-02,TE-01,IN-37,2020-07-23,2020-07-23,0.0,LS-06,NV-4",
]


def _csv(rows=ROWS, header=HEADER) -> io.StringIO:
    return io.StringIO("\n".join([header, *rows]) + "\n")


def test_import_maps_validates_and_reports(settings, db) -> None:
    summary = import_rows(_csv(), Mapping.load(SEED_MAPPING), batch_size=2)
    assert (summary.rows, summary.imported, summary.skipped) == (6, 3, 0)
    assert [(r.line, r.external_id, [p.path for p in r.problems]) for r in summary.rejected] == [
        (5, "OP-00003", ["tcv"]),
        (6, "OP-00004", ["region"]),
        (7, "OP-00001", ["external_id"]),
    ]
    assert "3 imported" in summary.report() and "line 5 (OP-00003): tcv" in summary.report()

    lost = db.opportunities.find_one({"external_id": "OP-00000"})
    assert lost["stage"] == "Lost" and lost["lost_reason"] == "not recorded"
    assert lost["created_at"].isoformat() == "2021-08-17T00:00:00+00:00"
    assert lost["closed_at"].isoformat() == "2022-02-06T00:00:00+00:00"
    open_deal = db.opportunities.find_one({"external_id": "OP-00002"})
    assert open_deal["closed_at"] is None and open_deal.get("lost_reason") is None
    assert open_deal["expected_close_date"].isoformat() == "2021-12-11T00:00:00+00:00"
    assert db.events.count_documents({"type": "imported"}) == 3


def test_rerunning_an_import_stores_nothing_twice(settings, db) -> None:
    mapping = Mapping.load(SEED_MAPPING)
    first = import_rows(_csv(), mapping)
    again = import_rows(_csv(), mapping)
    assert (again.imported, again.skipped, len(again.rejected)) == (0, first.imported, 3)
    assert db.opportunities.count_documents({}) == db.events.count_documents({}) == 3


def test_a_rerun_completes_an_import_interrupted_before_its_events(settings, db) -> None:
    mapping = Mapping.load(SEED_MAPPING)
    import_rows(_csv(), mapping)
    db.events.delete_many({})
    import_rows(_csv(), mapping)
    assert db.events.count_documents({"type": "imported"}) == 3


def test_imported_dates_filter_the_list(settings, api) -> None:
    import_rows(_csv(), Mapping.load(SEED_MAPPING))
    items = api.get("/opportunities", params={"created_from": "2021-01-01"}).json()["items"]
    assert sorted(i["external_id"] for i in items) == ["OP-00000", "OP-00002"]
    items = api.get("/opportunities", params={"created_to": "2021-01-01"}).json()["items"]
    assert [i["external_id"] for i in items] == ["OP-00001"]


@pytest.mark.parametrize(
    ("header", "message"),
    [
        (HEADER.replace("regiones", "region_x"), "missing column(s) regiones"),
        (HEADER + ",extra", "unmapped column(s) extra"),
        ("", "empty"),
    ],
)
def test_a_file_that_does_not_match_the_mapping_is_refused(settings, db, header, message) -> None:
    with pytest.raises(ImportFileError, match=message.replace("(", r"\(").replace(")", r"\)")):
        import_rows(
            _csv(rows=[] if not header else ROWS[:1], header=header), Mapping.load(SEED_MAPPING)
        )
    assert db.opportunities.count_documents({}) == 0


def test_a_mapping_naming_unknown_fields_is_refused(tmp_path) -> None:
    path = tmp_path / "m.toml"
    path.write_text('[columns]\nregiones = "zone"\n')
    with pytest.raises(ImportFileError, match="unknown field"):
        Mapping.load(path)


def test_without_a_mapping_columns_carry_field_names(settings, db) -> None:
    out = io.StringIO()
    writer = csv.writer(out)
    fields = [
        "external_id",
        "client_code",
        "business_unit",
        "opportunity_type",
        "acv",
        "tcv",
        "margin",
        "region",
        "territory",
        "industry",
        "lead_source",
        "seller_id",
        "expected_close_date",
        "stage",
        "created_at",
    ]
    writer.writerow(fields)
    writer.writerow(
        [
            "X-1",
            "CL-00001",
            "BU-00",
            "TY-00",
            "10",
            "20",
            "0.1",
            "RE-00",
            "TE-00",
            "IN-00",
            "LS-00",
            "NV-0",
            "2027-01-01",
            "S2",
            "2026-11-01T10:00:00Z",
        ]
    )
    out.seek(0)
    assert import_rows(out).imported == 1


@pytest.mark.skipif(not SEED_CSV.exists(), reason="the prototype's data lies beside the repo")
def test_the_prototype_csv_loads_through_the_cli(settings, tmp_path) -> None:
    env = {
        "MONGODB_URI": settings.mongodb_uri,
        "MONGODB_DATABASE": settings.mongodb_database,
        "POSTGRES_DSN": settings.postgres_dsn,
        "REDIS_URL": settings.redis_url,
        "PATH": "/usr/bin:/bin",
    }
    rejects = tmp_path / "rejects.csv"
    command = [
        sys.executable,
        "-m",
        "shared.cli",
        "import-csv",
        str(SEED_CSV),
        "--mapping",
        str(SEED_MAPPING),
        "--rejects",
        str(rejects),
    ]
    result = subprocess.run(
        command, env=env, capture_output=True, text=True, timeout=300, cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr
    assert (
        "13,791 row(s) read: 13,772 imported, 0 already imported (skipped), 19 rejected."
        in result.stdout
    )
    assert len(rejects.read_text().splitlines()) == 20
    again = subprocess.run(
        command, env=env, capture_output=True, text=True, timeout=300, cwd=tmp_path
    )
    assert "0 imported, 13,772 already imported (skipped), 19 rejected" in again.stdout
