-- loyalty: points per customer, and one accrual per processed event.
CREATE SCHEMA IF NOT EXISTS loyalty;

CREATE TABLE loyalty.accounts (
    customer_id  text PRIMARY KEY,
    tier         text   NOT NULL DEFAULT 'standard' CHECK (tier IN ('standard', 'premium')),
    points       bigint NOT NULL DEFAULT 0,
    updated_at   timestamptz NOT NULL DEFAULT now()
);

-- The event id is the primary key: a redelivered or replayed event cannot
-- accrue twice.
CREATE TABLE loyalty.accruals (
    event_id     uuid PRIMARY KEY,
    order_id     uuid   NOT NULL,
    customer_id  text   NOT NULL,
    points       bigint NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now()
);

INSERT INTO loyalty.accounts (customer_id, tier) VALUES
    ('premium-pat', 'premium'),
    ('premium-sam', 'premium');
