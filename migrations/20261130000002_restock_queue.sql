-- The restock queue, where the live scenario slow-inventory happens.
--
-- A reservation that files a restock request adds its units to the
-- product's row here. The restock batch job works through the queue in one
-- long transaction, holding every row's lock meanwhile: a reservation that
-- files a request then waits for that lock in PostgreSQL. The fix defers
-- the request to restock_deferred (an append, which waits on nothing) when
-- the lock is not had within its timeout; the batch job folds those in.
CREATE TABLE inventory.restock_requests (
    sku              text PRIMARY KEY REFERENCES inventory.products (sku),
    requested_units  bigint NOT NULL DEFAULT 0,
    updated_at       timestamptz NOT NULL DEFAULT now()
);
INSERT INTO inventory.restock_requests (sku) SELECT sku FROM inventory.products;

CREATE TABLE inventory.restock_deferred (
    id          bigserial PRIMARY KEY,
    sku         text    NOT NULL,
    units       integer NOT NULL CHECK (units > 0),
    order_id    uuid    NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now()
);
