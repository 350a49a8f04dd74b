"""The SQL that fills a ledger month for bench/ledger_scale.py, straight in Postgres.

Rows come from `generate_series` over request numbers, so 50M attempts take minutes and no
Python row objects. Every property of a request is a pure function of its number `i`
(through one multiplicative hash, `u`), so the requests and the attempts statements agree
without a join, and a run is reproducible. The mix, per request:

- 20 routes, 200 keys in 12 teams (5 % of requests without a key); a key calls 3 of the
  routes (as an application does), a route has its workload (8 workloads, 2 routes none);
  12 deployments on 6 providers (serverless, dedicated, closed API), the route's own first;
- 85 % one attempt, 12 % two (a retry on the same deployment or a fallback), 3 % three;
  earlier attempts fail with a 429 (no tokens, no cost); 3 % of requests fail at the end
  (a 500, no deployment answered); 5 % are response-cache hits (role cache_hit, no cost,
  their savings recorded);
- a third of the routes are gated (95 % pass); 30 % of answers read cached input; reasoning
  tokens on a fifth of the routes; 40 % streams; endpoints chat (85 %), responses, embeddings;
- 20 % of requests belong to 6-call workflows, consecutive calls of one key and route (an
  agent run: the key and route come from the workflow's number `w`, everything else from the
  call's); 0.5 % of priced attempts have no price (NULL cost, never $0); prices change version
  mid-month.
"""

from __future__ import annotations

PROVIDERS = (
    ("fireworks", "serverless"),
    ("together", "serverless"),
    ("gpu-east", "dedicated"),
    ("openai", "closed_api"),
    ("anthropic", "closed_api"),
    ("deepinfra", "serverless"),
)
DEPLOYMENTS = 12
ROUTES = 20
KEYS = 200
# Cache hits (5 %) make one attempt; the rest 0.85 × 1 + 0.12 × 2 + 0.03 × 3 = 1.18.
ATTEMPTS_PER_REQUEST = 0.05 + 0.95 * 1.18

# Per request number i: the hash and the choices made from it (one row per request).
_BASE = """
SELECT i, u, key_n, route_n,
  CASE WHEN route_n % 10 >= 8 THEN NULL ELSE route_n % 10 END AS wl_n,
  CASE WHEN (u / 7) % 100 < 5 THEN 1
       WHEN (u / 800000) % 100 < 85 THEN 1
       WHEN (u / 800000) % 100 < 97 THEN 2 ELSE 3 END AS n_att,
  (u / 7) % 100 < 5 AS hit,
  (u / 7) % 100 < 5 OR (u / 11) % 100 < 97 AS ok,
  CASE WHEN (u / 13) % 100 < 85 THEN 'chat/completions'
       WHEN (u / 13) % 100 < 93 THEN 'responses' ELSE 'embeddings' END AS endpoint,
  (u / 17) % 10 < 4 AND (u / 13) % 100 < 93 AS stream,
  CASE WHEN route_n % 3 <> 0 THEN NULL
       WHEN (u / 19) % 100 < 95 THEN 'pass' ELSE 'fail:json_schema' END AS gate,
  200 + (u / 23) % 1800 AS inp,
  CASE WHEN (u / 29) % 10 < 3 THEN (200 + (u / 23) % 1800) / 2 ELSE 0 END AS cached,
  50 + (u / 31) % 700 AS out,
  CASE WHEN route_n % 5 = 0 THEN (50 + (u / 31) % 700) / 5 ELSE 0 END AS reasoning,
  (u / 37) % 2 = 0 AS retry,
  (u / 43) % 200 = 0 AS unpriced,
  300 + (u / 41) % 4000 AS latency,
  TIMESTAMPTZ '{start}' + ((i - {first}) * {step_us}) * INTERVAL '1 microsecond' AS at
FROM (
  SELECT i, u, key_n,
    CASE WHEN key_n IS NULL THEN w % {routes}
         ELSE (key_n * 7 + (w / 20000) % 3) % {routes} END AS route_n
  FROM (
    SELECT i, u, w, CASE WHEN (w / 4000) % 20 = 0 THEN NULL ELSE (w / 20) % {keys} END AS key_n
    FROM (SELECT i, u,
            CASE WHEN (i / 6) % 5 = 0 THEN ((i / 6) * 2654435761) % 4294967296 ELSE u END AS w
          FROM (SELECT i, (i * 2654435761) % 4294967296 AS u
                FROM generate_series({lo}::bigint, {hi}::bigint) AS i) AS h) AS g
  ) AS k
) AS r
"""

# The deployment of attempt n: the route's own; a retry stays on it, a fallback moves on.
_DEPLOYMENT = """(CASE WHEN n = 1 OR (n = 2 AND b.retry) THEN b.route_n % {deps}
      WHEN n = 2 THEN (b.route_n + 5) % {deps} ELSE (b.route_n + 10) % {deps} END)"""

# Per-token prices in $/M by deployment number d: input 0.10 × (d + 1), output 0.30 × (d + 1),
# cached input at half price; dedicated deployments bill by the hour (no token cost).
_COST = """ROUND((((b.inp - b.cached) * 0.10 + b.cached * 0.05 + b.out * 0.30) * (d + 1))
      / 1000000.0, 10)"""


def _provider(d: str) -> str:
    names = " ".join(f"WHEN {k} THEN '{p}'" for k, (p, _) in enumerate(PROVIDERS))
    return f"(CASE {d} % {len(PROVIDERS)} {names} END)"


def _kind(d: str) -> str:
    kinds = " ".join(f"WHEN {k} THEN '{kind}'" for k, (_, kind) in enumerate(PROVIDERS))
    return f"(CASE {d} % {len(PROVIDERS)} {kinds} END)"


def _base(lo: int, hi: int, first: int, start: str, step_us: float) -> str:
    return _BASE.format(
        routes=ROUTES, keys=KEYS, lo=lo, hi=hi, first=first, start=start, step_us=step_us
    )


def requests_sql(lo: int, hi: int, *, first: int, start: str, step_us: float) -> str:
    """Requests lo..hi (numbered from `first` at `start`, one every step_us µs)."""
    last_dep = _DEPLOYMENT.replace("n = 1", "b.n_att = 1").replace("n = 2", "b.n_att = 2")
    last_dep = last_dep.format(deps=DEPLOYMENTS)
    d = "d"
    return f"""
INSERT INTO requests (id, received_at, key_id, route, requested_model, endpoint, workload,
  stream, final_status, error_class, final_deployment, attempts, input_uncached_tokens,
  cached_read_tokens, cache_write_tokens, output_tokens, reasoning_tokens, cost_usd,
  latency_ms, ttft_ms, gate_outcome, decision, team, segment, consensus, workflow_id, batch_id)
SELECT 'req-' || b.i, b.at,
  CASE WHEN b.key_n IS NULL THEN NULL ELSE 'key-' || b.key_n END,
  'route-' || b.route_n, 'route-' || b.route_n, b.endpoint,
  CASE WHEN b.wl_n IS NULL THEN NULL ELSE 'wl-' || b.wl_n END,
  b.stream,
  CASE WHEN b.ok THEN 200 ELSE 502 END,
  CASE WHEN b.ok THEN NULL ELSE 'http_500' END,
  CASE WHEN b.ok THEN 'dep-' || {d} ELSE NULL END,
  b.n_att,
  CASE WHEN b.ok THEN b.inp - b.cached ELSE 0 END,
  CASE WHEN b.ok THEN b.cached ELSE 0 END, 0,
  CASE WHEN b.ok THEN b.out ELSE 0 END,
  CASE WHEN b.ok THEN b.reasoning ELSE 0 END,
  CASE WHEN NOT b.ok OR b.hit OR {_kind(d)} = 'dedicated' THEN 0
       WHEN b.unpriced THEN NULL ELSE {_COST} END,
  b.latency + (b.n_att - 1) * 1500,
  CASE WHEN b.stream THEN 120 + b.u % 300 ELSE NULL END,
  CASE WHEN b.ok THEN b.gate ELSE NULL END,
  NULL,
  CASE WHEN b.key_n IS NULL THEN NULL ELSE 'team-' || (b.key_n % 12) END,
  NULL, NULL,
  CASE WHEN (b.i / 6) % 5 = 0 THEN 'wf-' || (b.i / 6) ELSE NULL END,
  NULL
FROM ({_base(lo, hi, first, start, step_us)}) AS b,
  LATERAL (SELECT {last_dep} AS d) AS dd
"""


def attempts_sql(lo: int, hi: int, *, first: int, start: str, step_us: float) -> str:
    """The attempts of requests lo..hi (the same numbering as requests_sql)."""
    dep = _DEPLOYMENT.format(deps=DEPLOYMENTS)
    d = "d"
    last = "n = b.n_att"
    answered = f"({last} AND b.ok)"
    return f"""
INSERT INTO attempts (id, request_id, attempt_no, role, deployment, provider, provider_kind,
  upstream_model, provider_request_id, started_at, ttft_ms, latency_ms, http_status,
  error_class, input_uncached_tokens, cached_read_tokens, cache_write_tokens, output_tokens,
  reasoning_tokens, token_source, cost_usd, price_version, gate_outcome, drill_id, saved_usd,
  units, unit)
SELECT 'att-' || b.i || '-' || n, 'req-' || b.i, n,
  CASE WHEN b.hit THEN 'cache_hit' WHEN n = 1 THEN 'primary'
       WHEN n = 2 AND b.retry THEN 'retry' ELSE 'fallback' END,
  'dep-' || {d}, {_provider(d)}, {_kind(d)}, 'model-' || {d},
  CASE WHEN b.hit THEN NULL ELSE 'up-' || b.i || '-' || n END,
  b.at + ((n - 1) * 1500 + 2) * INTERVAL '1 millisecond',
  CASE WHEN {answered} AND b.stream THEN 120 + b.u % 300 ELSE NULL END,
  CASE WHEN {last} THEN b.latency ELSE 20 END,
  CASE WHEN b.hit THEN NULL WHEN {answered} THEN 200 WHEN {last} THEN 500 ELSE 429 END,
  CASE WHEN {answered} THEN NULL WHEN {last} THEN 'http_500' ELSE 'http_429' END,
  CASE WHEN {answered} THEN b.inp - b.cached ELSE 0 END,
  CASE WHEN {answered} THEN b.cached ELSE 0 END, 0,
  CASE WHEN {answered} THEN b.out ELSE 0 END,
  CASE WHEN {answered} THEN b.reasoning ELSE 0 END,
  CASE WHEN b.hit THEN 'cache' ELSE 'provider' END,
  CASE WHEN NOT {answered} OR b.hit OR {_kind(d)} = 'dedicated' THEN 0
       WHEN b.unpriced THEN NULL ELSE {_COST} END,
  CASE WHEN {_kind(d)} = 'dedicated' OR b.hit THEN NULL
       ELSE 'p' || {d} || CASE WHEN b.at < TIMESTAMPTZ '{start}' + INTERVAL '14 days'
                              THEN '-v1' ELSE '-v2' END END,
  CASE WHEN {answered} THEN b.gate ELSE NULL END,
  NULL,
  CASE WHEN b.hit AND {_kind(d)} <> 'dedicated' THEN {_COST} ELSE NULL END,
  NULL, NULL
FROM ({_base(lo, hi, first, start, step_us)}) AS b,
  LATERAL generate_series(1, b.n_att) AS n,
  LATERAL (SELECT {dep} AS d) AS dd
"""


def invoice_sql(month_start: str, month_end: str) -> str:
    """Per provider × UTC day × model: the metered tokens a provider bills (cache hits and
    the dedicated GPU's tokens excluded), for the invoices bench/ledger_scale.py writes."""
    return f"""
SELECT provider, to_char(started_at AT TIME ZONE 'UTC', 'YYYY-MM-DD') AS day, upstream_model,
  SUM(input_uncached_tokens), SUM(cached_read_tokens), SUM(output_tokens)
FROM attempts
WHERE started_at >= TIMESTAMPTZ '{month_start}' AND started_at < TIMESTAMPTZ '{month_end}'
  AND role <> 'cache_hit' AND provider_kind <> 'dedicated'
GROUP BY 1, 2, 3 ORDER BY 1, 2, 3
"""
