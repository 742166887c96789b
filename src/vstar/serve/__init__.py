"""``vstar serve RUN_DIR``: top-k recommendations of a trained run folder over HTTP.

    from vstar.serve import create_app
    app = create_app("runs/demo_ml100k/vstar/seed0", max_batch=32, max_wait_ms=2)
"""

from vstar.serve.app import Recommender, RecommendRequest, ServeConfig, create_app

__all__ = ["Recommender", "RecommendRequest", "ServeConfig", "create_app"]
