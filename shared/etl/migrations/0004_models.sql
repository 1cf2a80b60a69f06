-- The model registry, and the ETL's scores of every open opportunity for Power BI.

CREATE TABLE model_version (
    version       bigserial PRIMARY KEY,
    created_at    timestamptz NOT NULL DEFAULT now(),
    kind          text NOT NULL,                 -- gradient_boosting, logistic_regression, prior
    is_prior      boolean NOT NULL,
    spec_version  text NOT NULL,
    feature_spec  jsonb NOT NULL,
    data_from     timestamptz,                   -- closing dates of the deals it learnt from
    data_to       timestamptz,
    n_won         integer NOT NULL,
    n_lost        integer NOT NULL,
    metrics       jsonb NOT NULL,                -- roc_auc, pr_auc, brier, ... (holdout)
    calibration   jsonb NOT NULL,
    importance    jsonb NOT NULL,
    candidates    jsonb NOT NULL,                -- holdout roc_auc of each candidate
    decision      text NOT NULL,                 -- why it was, or was not, activated
    artifact      bytea NOT NULL,
    sha256        text NOT NULL
);

-- Every activation, newest last: the active model is the top of the stack these describe
-- (an activation pushes its version; a rollback pops one and records the version it restores).
CREATE TABLE model_activation (
    activation_id  bigserial PRIMARY KEY,
    version        bigint NOT NULL REFERENCES model_version (version),
    activated_at   timestamptz NOT NULL DEFAULT now(),
    action         text NOT NULL CHECK (action IN ('activate', 'rollback')),
    reason         text NOT NULL
);

-- The latest score of each open opportunity.
CREATE TABLE fact_prediction (
    opportunity_id     text PRIMARY KEY,
    model_version      bigint NOT NULL,
    is_prior           boolean NOT NULL,
    scored_at          timestamptz NOT NULL,
    probability        double precision NOT NULL,
    predicted_outcome  text NOT NULL CHECK (predicted_outcome IN ('Won', 'Lost')),
    factors            jsonb NOT NULL
);

CREATE VIEW reporting."Predictions" AS
SELECT p.opportunity_id                   AS "Opportunity",
       o.stage                            AS "Stage",
       o.region                           AS "Region",
       o.seller_id                        AS "Seller",
       o.business_unit                    AS "Business Unit",
       o.expected_close_date              AS "Expected Close Date",
       o.expected_close_date_key          AS "Expected Close Date Key",
       o.acv                              AS "ACV",
       o.tcv                              AS "TCV",
       p.probability                      AS "Win Probability",
       p.predicted_outcome                AS "Predicted Outcome",
       round((p.probability * o.acv)::numeric, 2) AS "Weighted ACV",
       round((p.probability * o.tcv)::numeric, 2) AS "Weighted TCV",
       p.model_version                    AS "Model Version",
       p.is_prior                         AS "Prior Model",
       p.scored_at                        AS "Scored At",
       p.factors -> 'up' -> 0 ->> 'feature'   AS "Top Factor Up",
       p.factors -> 'down' -> 0 ->> 'feature' AS "Top Factor Down"
FROM public.fact_prediction p
JOIN public.fact_opportunity o USING (opportunity_id)
WHERE NOT o.is_deleted AND NOT o.is_closed;

-- The metrics keep the names they have everywhere else (CLI, model card, API).
CREATE VIEW reporting."Models" AS
SELECT m.version                           AS "Version",
       m.created_at                        AS "Trained At",
       m.kind                              AS "Kind",
       m.is_prior                          AS "Prior Model",
       m.data_from                         AS "Data From",
       m.data_to                           AS "Data To",
       a.version IS NOT NULL               AS "Active",
       (m.metrics ->> 'roc_auc')::float8   AS roc_auc,
       (m.metrics ->> 'pr_auc')::float8    AS pr_auc,
       (m.metrics ->> 'brier')::float8     AS brier,
       (m.metrics ->> 'log_loss')::float8  AS log_loss,
       (m.metrics ->> 'accuracy')::float8  AS accuracy,
       (m.metrics ->> 'f1')::float8        AS f1,
       (m.metrics ->> 'threshold')::float8 AS threshold,
       (m.metrics ->> 'n_train')::integer  AS n_train,
       (m.metrics ->> 'n_test')::integer   AS n_test,
       m.decision                          AS "Decision"
FROM public.model_version m
LEFT JOIN (SELECT version FROM public.model_activation
           ORDER BY activation_id DESC LIMIT 1) a USING (version);

-- Views made after 0002's GRANT ... ON ALL TABLES are covered by its default privileges only
-- when this role created them; grant explicitly.
GRANT SELECT ON reporting."Predictions", reporting."Models" TO salespredict_reader;
