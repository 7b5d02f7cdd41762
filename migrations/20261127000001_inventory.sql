-- inventory: the catalog, stock levels and per-order reservations.
-- Stock is conserved: for each product, the seeded stock equals
-- on_hand + reserved + sold at all times.
CREATE SCHEMA IF NOT EXISTS inventory;

CREATE TABLE inventory.products (
    sku          text PRIMARY KEY,
    name         text   NOT NULL,
    price_cents  bigint NOT NULL CHECK (price_cents >= 0),
    on_hand      integer NOT NULL CHECK (on_hand >= 0),
    reserved     integer NOT NULL DEFAULT 0 CHECK (reserved >= 0),
    sold         integer NOT NULL DEFAULT 0 CHECK (sold >= 0)
);

CREATE TABLE inventory.reservations (
    order_id          uuid    NOT NULL,
    sku               text    NOT NULL REFERENCES inventory.products (sku),
    quantity          integer NOT NULL CHECK (quantity > 0),
    unit_price_cents  bigint  NOT NULL,
    state             text    NOT NULL CHECK (state IN ('reserved', 'sold', 'released')),
    created_at        timestamptz NOT NULL DEFAULT now(),
    updated_at        timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (order_id, sku)
);

INSERT INTO inventory.products (sku, name, price_cents, on_hand) VALUES
    ('KB-001',  'Mechanical keyboard',     8900, 100000),
    ('MS-002',  'Wireless mouse',          2900, 100000),
    ('MN-003',  '27-inch monitor',        24900,  20000),
    ('CB-004',  'USB-C cable',              900, 500000),
    ('HS-005',  'Headset',                 5900,  50000),
    ('LMP-006', 'Desk lamp',               3400,  30000),
    ('LTD-007', 'Limited-edition print',  12000,      3);
