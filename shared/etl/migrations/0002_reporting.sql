-- What Power BI imports: views with plain business names in the `reporting` schema, and a
-- read-only role that can select from them and nothing else.

CREATE SCHEMA reporting;

CREATE VIEW reporting."Opportunities" AS
SELECT o.opportunity_id           AS "Opportunity",
       o.external_id              AS "External Id",
       o.client_code              AS "Client",
       o.business_unit            AS "Business Unit",
       o.opportunity_type         AS "Opportunity Type",
       o.region                   AS "Region",
       o.territory                AS "Territory",
       o.industry                 AS "Industry",
       o.lead_source              AS "Lead Source",
       o.seller_id                AS "Seller",
       o.acv                      AS "ACV",
       o.tcv                      AS "TCV",
       o.margin                   AS "Margin",
       o.stage                    AS "Stage",
       o.is_closed                AS "Is Closed",
       o.is_won                   AS "Is Won",
       o.lost_reason              AS "Lost Reason",
       o.created_at               AS "Created At",
       o.created_date_key         AS "Created Date Key",
       o.expected_close_date      AS "Expected Close Date",
       o.expected_close_date_key  AS "Expected Close Date Key",
       o.closed_at                AS "Closed At",
       o.closed_date_key          AS "Closed Date Key",
       CASE WHEN o.closed_at IS NOT NULL
            THEN (o.closed_at AT TIME ZONE 'UTC')::date - (o.created_at AT TIME ZONE 'UTC')::date
       END                        AS "Cycle Days",
       o.updated_at               AS "Updated At"
FROM public.fact_opportunity o
WHERE NOT o.is_deleted;

CREATE VIEW reporting."Stage Changes" AS
SELECT s.event_id          AS "Event",
       s.opportunity_id    AS "Opportunity",
       s.event_type        AS "Event Type",
       s.from_stage        AS "From Stage",
       s.to_stage          AS "To Stage",
       s.changed_at        AS "Changed At",
       s.changed_date_key  AS "Changed Date Key"
FROM public.fact_stage_change s
JOIN public.fact_opportunity o USING (opportunity_id)
WHERE NOT o.is_deleted;

CREATE VIEW reporting."Pipeline by Stage" AS
SELECT o.stage         AS "Stage",
       count(*)        AS "Opportunities",
       sum(o.acv)      AS "ACV",
       sum(o.tcv)      AS "TCV"
FROM public.fact_opportunity o
WHERE NOT o.is_deleted AND NOT o.is_closed
GROUP BY o.stage;

CREATE VIEW reporting."Win Rate by Region" AS
SELECT o.region                                    AS "Region",
       count(*) FILTER (WHERE o.stage = 'Won')     AS "Won",
       count(*) FILTER (WHERE o.stage = 'Lost')    AS "Lost",
       round(count(*) FILTER (WHERE o.stage = 'Won')::numeric
             / nullif(count(*) FILTER (WHERE o.is_closed), 0), 4) AS "Win Rate"
FROM public.fact_opportunity o
WHERE NOT o.is_deleted
GROUP BY o.region;

CREATE VIEW reporting."Calendar" AS
SELECT date_key AS "Date Key", date AS "Date", year AS "Year", quarter AS "Quarter",
       month AS "Month", month_name AS "Month Name", day AS "Day",
       day_of_week AS "Day of Week", day_name AS "Day Name", week_of_year AS "Week of Year",
       is_weekend AS "Is Weekend"
FROM public.dim_date;

CREATE VIEW reporting."Regions"           AS SELECT region_code AS "Region" FROM public.dim_region;
CREATE VIEW reporting."Territories"       AS SELECT territory_code AS "Territory" FROM public.dim_territory;
CREATE VIEW reporting."Business Units"    AS SELECT business_unit_code AS "Business Unit" FROM public.dim_business_unit;
CREATE VIEW reporting."Industries"        AS SELECT industry_code AS "Industry" FROM public.dim_industry;
CREATE VIEW reporting."Lead Sources"      AS SELECT lead_source_code AS "Lead Source" FROM public.dim_lead_source;
CREATE VIEW reporting."Opportunity Types" AS SELECT opportunity_type_code AS "Opportunity Type" FROM public.dim_opportunity_type;
CREATE VIEW reporting."Sellers"           AS SELECT seller_id AS "Seller" FROM public.dim_seller;
CREATE VIEW reporting."Clients"           AS SELECT client_code AS "Client" FROM public.dim_client;

CREATE VIEW reporting."ETL Runs" AS
SELECT run_id AS "Run", kind AS "Kind", started_at AS "Started At", finished_at AS "Finished At",
       read AS "Read", upserted AS "Upserted", rejected AS "Rejected", status AS "Status",
       error AS "Error"
FROM public.etl_run;

DO $$
BEGIN
    CREATE ROLE salespredict_reader NOLOGIN;
EXCEPTION WHEN duplicate_object THEN
    NULL;  -- roles belong to the server: another database of it created this one already
END
$$;
GRANT USAGE ON SCHEMA reporting TO salespredict_reader;
GRANT SELECT ON ALL TABLES IN SCHEMA reporting TO salespredict_reader;
ALTER DEFAULT PRIVILEGES IN SCHEMA reporting GRANT SELECT ON TABLES TO salespredict_reader;
