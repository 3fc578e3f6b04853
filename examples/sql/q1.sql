-- Nexmark q1: currency conversion. As ../shared/nexmark.md fixes it (and as Oxflow's Rust q1
-- computes it), without the `extra` column Nexmark's published text also selects.
CREATE TABLE nexmark_q1 (
    auction  BIGINT,
    bidder  BIGINT,
    price  DOUBLE,
    dateTime  TIMESTAMP(3)
) WITH (
    'connector' = 'blackhole'
);

INSERT INTO nexmark_q1
SELECT
    auction,
    bidder,
    0.908 * price as price, -- convert dollar to euro
    dateTime
FROM bid;
