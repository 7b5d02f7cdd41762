-- Stock that always comes back: a failed order's release is as certain as a
-- confirmed order's commit.

-- The durable intent to give a failed order's stock back. Set in the same
-- transaction that fails the order (any failed order may hold a reservation:
-- a timed-out reserve may still have gone through), cleared once inventory
-- confirms the release. The order service's repair loop repeats the release,
-- with backoff, until then: a database or inventory outage delays the
-- release, it never loses it.
ALTER TABLE ordering.orders ADD COLUMN stock_release_pending boolean NOT NULL DEFAULT false;
ALTER TABLE ordering.orders ADD COLUMN release_attempts integer NOT NULL DEFAULT 0;
ALTER TABLE ordering.orders ADD COLUMN release_next_at timestamptz;
CREATE INDEX orders_release_pending ON ordering.orders (release_next_at) WHERE stock_release_pending;

-- One row per order inventory has been asked about. Reserve and release of
-- one order both lock it first, so they never interleave; and a release
-- leaves `released` behind, so that a reserve arriving after it (one the
-- order service already gave up waiting for) is refused instead of holding
-- stock that nobody will ever release.
CREATE TABLE inventory.order_holds (
    order_id    uuid PRIMARY KEY,
    released    boolean NOT NULL DEFAULT false,
    updated_at  timestamptz NOT NULL DEFAULT now()
);
