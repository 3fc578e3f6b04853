-- Nexmark q7, highest bid: per tumbling 10 s window, the bids with the highest price. The
-- window maximum joined back to the bids of its window, with the output ../shared/nexmark.md
-- fixes. A regular join on the price: the bids stay in state (SET 'table.exec.state.ttl'
-- bounds it).
CREATE TABLE nexmark_q7 (
  window_start TIMESTAMP(3),
  window_end TIMESTAMP(3),
  auction  BIGINT,
  bidder  BIGINT,
  price  BIGINT,
  dateTime  TIMESTAMP(3)
) WITH (
  'connector' = 'blackhole'
);

INSERT INTO nexmark_q7
SELECT B1.window_start, B1.window_end, B.auction, B.bidder, B.price, B.dateTime
FROM bid B
JOIN (
  SELECT MAX(price) AS maxprice, window_start, window_end
  FROM TABLE(TUMBLE(TABLE bid, DESCRIPTOR(dateTime), INTERVAL '10' SECOND))
  GROUP BY window_start, window_end
) B1
ON B.price = B1.maxprice
WHERE B.dateTime >= B1.window_start AND B.dateTime < B1.window_end;
