-- analytics: every order event, and the running totals derived from them.
CREATE SCHEMA IF NOT EXISTS analytics;

CREATE TABLE analytics.order_events (
    event_id     uuid PRIMARY KEY,
    order_id     uuid   NOT NULL,
    kind         text   NOT NULL CHECK (kind IN ('confirmed', 'failed')),
    customer_id  text   NOT NULL,
    total_cents  bigint NOT NULL,
    item_count   integer NOT NULL,
    occurred_at  timestamptz NOT NULL,
    recorded_at  timestamptz NOT NULL DEFAULT now()
);

-- One row, updated in the same transaction as each recorded event.
CREATE TABLE analytics.totals (
    id                boolean PRIMARY KEY DEFAULT true CHECK (id),
    orders_confirmed  bigint NOT NULL DEFAULT 0,
    orders_failed     bigint NOT NULL DEFAULT 0,
    revenue_cents     bigint NOT NULL DEFAULT 0
);

INSERT INTO analytics.totals (id) VALUES (true);
