"""Constants of the served test data dir (tests/serving/conftest.py builds it)."""

from datetime import date

REDIS_URL = "redis://127.0.0.1:6379/2"   # the serving area's Redis database: holds the claims below
# A test session claims one of these databases for its online store (conftest.online_store_url), so two runs
# at once (CI's clone and a working tree, or the benchmark) never read each other's features or flush them.
SESSION_DBS = tuple(range(9, 16))
DAYS = (date(2026, 1, 1), date(2026, 1, 2))
SERVED_DAY = DAYS[-1]
SMALL_RANKER = {"cross_layers": 1, "cross_rank": 8, "mlp_widths": (32, 16), "embedding_dim": 8}
