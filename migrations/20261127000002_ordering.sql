-- ordering: orders, their lines, and the transactional outbox of order events.
CREATE SCHEMA IF NOT EXISTS ordering;

CREATE TABLE ordering.orders (
    order_id        uuid PRIMARY KEY,
    customer_id     text   NOT NULL,
    status          text   NOT NULL CHECK (status IN ('pending', 'confirmed', 'failed')),
    total_cents     bigint NOT NULL DEFAULT 0,
    failure_code    integer,
    failure_reason  text,
    -- Needed for the notification event; never logged or traced.
    email           text,
    trace_id        text,
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE ordering.order_items (
    order_id          uuid    NOT NULL REFERENCES ordering.orders (order_id),
    sku               text    NOT NULL,
    quantity          integer NOT NULL CHECK (quantity > 0),
    unit_price_cents  bigint  NOT NULL DEFAULT 0,
    PRIMARY KEY (order_id, sku)
);

-- Written in the same transaction as the order's final state; the relay
-- publishes each row to JetStream and marks it published only after the ack.
-- The trace context of the decision is kept so that the PRODUCER span joins
-- the order's trace even when the relay publishes much later.
CREATE TABLE ordering.outbox (
    id            bigserial PRIMARY KEY,
    event_id      uuid   NOT NULL UNIQUE,
    subject       text   NOT NULL,
    payload_type  text   NOT NULL,
    payload       bytea  NOT NULL,
    traceparent   text,
    tracestate    text,
    created_at    timestamptz NOT NULL DEFAULT now(),
    published_at  timestamptz,
    attempts      integer NOT NULL DEFAULT 0,
    last_error    text
);

CREATE INDEX outbox_unpublished ON ordering.outbox (id) WHERE published_at IS NULL;
