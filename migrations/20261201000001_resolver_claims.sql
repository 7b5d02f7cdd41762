-- Several order instances each run the crash resolver. A resolver claims
-- the rows it is about to resolve for a short lease, so that two never
-- resolve one order at once (and draw its trace twice); a claim that its
-- instance did not finish (it died) lapses and another takes the row.
ALTER TABLE ordering.orders ADD COLUMN resolver_claimed_until timestamptz;
