-- The reporting star schema: facts, dimensions and the ETL's own bookkeeping.

CREATE TABLE dim_date (
    date_key      integer PRIMARY KEY,          -- yyyymmdd
    date          date NOT NULL UNIQUE,
    year          smallint NOT NULL,
    quarter       smallint NOT NULL,
    month         smallint NOT NULL,
    month_name    text NOT NULL,
    day           smallint NOT NULL,
    day_of_week   smallint NOT NULL,            -- ISO: 1 = Monday
    day_name      text NOT NULL,
    week_of_year  smallint NOT NULL,            -- ISO week
    is_weekend    boolean NOT NULL
);

CREATE TABLE dim_region           (region_code text PRIMARY KEY);
CREATE TABLE dim_territory        (territory_code text PRIMARY KEY);
CREATE TABLE dim_business_unit    (business_unit_code text PRIMARY KEY);
CREATE TABLE dim_industry         (industry_code text PRIMARY KEY);
CREATE TABLE dim_lead_source      (lead_source_code text PRIMARY KEY);
CREATE TABLE dim_opportunity_type (opportunity_type_code text PRIMARY KEY);
CREATE TABLE dim_seller           (seller_id text PRIMARY KEY);
CREATE TABLE dim_client           (client_code text PRIMARY KEY);

-- Current state of every opportunity, one row each; the MongoDB document kept as jsonb.
CREATE TABLE fact_opportunity (
    opportunity_id            text PRIMARY KEY,
    seq                       bigint NOT NULL,
    external_id               text,
    client_code               text NOT NULL,
    business_unit             text NOT NULL,
    opportunity_type          text NOT NULL,
    region                    text NOT NULL,
    territory                 text NOT NULL,
    industry                  text NOT NULL,
    lead_source               text NOT NULL,
    seller_id                 text NOT NULL,
    acv                       numeric(18, 2) NOT NULL,
    tcv                       numeric(18, 2) NOT NULL,
    margin                    numeric(7, 4) NOT NULL,
    stage                     text NOT NULL,
    is_closed                 boolean NOT NULL,
    is_won                    boolean NOT NULL,
    lost_reason               text,
    notes                     text NOT NULL,
    expected_close_date       date NOT NULL,
    expected_close_date_key   integer NOT NULL,
    created_at                timestamptz NOT NULL,
    created_date_key          integer NOT NULL,
    updated_at                timestamptz NOT NULL,
    closed_at                 timestamptz,
    closed_date_key           integer,
    attributes                jsonb NOT NULL,
    version                   integer NOT NULL,
    is_deleted                boolean NOT NULL,
    document                  jsonb NOT NULL
);
CREATE INDEX fact_opportunity_region ON fact_opportunity (region);
CREATE INDEX fact_opportunity_stage ON fact_opportunity (stage);

-- One row per stage change, from the append-only events.
CREATE TABLE fact_stage_change (
    event_id          text PRIMARY KEY,
    opportunity_id    text NOT NULL,
    version           integer NOT NULL,
    event_type        text NOT NULL,
    from_stage        text,
    to_stage          text NOT NULL,
    changed_at        timestamptz NOT NULL,
    changed_date_key  integer NOT NULL
);
CREATE INDEX fact_stage_change_opportunity ON fact_stage_change (opportunity_id);

-- How far each MongoDB collection has been loaded: (ts, id) of the last document loaded.
CREATE TABLE etl_watermark (
    stream   text PRIMARY KEY,
    last_ts  timestamptz NOT NULL,
    last_id  text NOT NULL
);

CREATE TABLE etl_run (
    run_id          bigserial PRIMARY KEY,
    kind            text NOT NULL CHECK (kind IN ('incremental', 'full')),
    started_at      timestamptz NOT NULL DEFAULT now(),
    finished_at     timestamptz,
    watermark_from  jsonb NOT NULL,
    watermark_to    jsonb,
    read            integer NOT NULL DEFAULT 0,
    upserted        integer NOT NULL DEFAULT 0,
    rejected        integer NOT NULL DEFAULT 0,
    status          text NOT NULL CHECK (status IN ('running', 'succeeded', 'failed')),
    error           text
);

CREATE TABLE etl_reject (
    reject_id      bigserial PRIMARY KEY,
    run_id         bigint NOT NULL REFERENCES etl_run (run_id),
    stream         text NOT NULL,
    document_id    text NOT NULL,
    document_hash  text NOT NULL,
    reason         text NOT NULL,
    document       jsonb NOT NULL,
    rejected_at    timestamptz NOT NULL DEFAULT now(),
    UNIQUE (stream, document_id, document_hash)
);
