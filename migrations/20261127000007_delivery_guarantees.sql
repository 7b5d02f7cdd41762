-- Delivery guarantees: idempotent checkout, stock commits that survive a
-- crash, and payments that can be voided or refunded when an order fails
-- with an unknown payment outcome.

-- One row per (customer, Idempotency-Key): the first request's fingerprint
-- and, once decided, its reply, which every retry gets back.
CREATE TABLE ordering.idempotency_keys (
    customer_id   text   NOT NULL,
    key           text   NOT NULL,
    request_hash  text   NOT NULL,
    -- The order the first request created, once it exists: a retry after
    -- that request's process died answers from the order's final state.
    order_id      uuid,
    reply         bytea,
    created_at    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (customer_id, key)
);

-- False until inventory confirmed the sale; the order service's resolver
-- retries the (idempotent) commit for confirmed orders left false by a crash.
ALTER TABLE ordering.orders ADD COLUMN stock_committed boolean NOT NULL DEFAULT false;
CREATE INDEX orders_pending ON ordering.orders (created_at) WHERE status = 'pending';
CREATE INDEX orders_uncommitted ON ordering.orders (updated_at) WHERE status = 'confirmed' AND NOT stock_committed;

-- A payment can now be voided (the order failed before any charge: a late
-- charge is refused) or refunded (the order failed after the charge).
ALTER TABLE payment.payments ALTER COLUMN card_last4 DROP NOT NULL;
ALTER TABLE payment.payments DROP CONSTRAINT payments_status_check;
ALTER TABLE payment.payments ADD CONSTRAINT payments_status_check
    CHECK (status IN ('approved', 'declined', 'failed', 'voided', 'refunded'));
ALTER TABLE payment.payments ADD COLUMN updated_at timestamptz NOT NULL DEFAULT now();

-- The W3C context of the checkout, so that work done later for the order (the
-- resolver failing an interrupted checkout) joins the order's own trace.
ALTER TABLE ordering.orders ADD COLUMN traceparent text;
