"""comment: the reddit app's comments service (port 9292), storing comments in MongoDB."""

from __future__ import annotations

import os
import signal
import sys
import time

from flask import Flask, jsonify, request
from prometheus_client import CONTENT_TYPE_LATEST, Counter, Histogram, generate_latest
from pymongo import MongoClient
from pymongo.errors import PyMongoError

VERSION = os.environ.get("APP_VERSION", "dev")
BROKEN = os.environ.get("APP_BROKEN") == "1"
DB_HOST = os.environ.get("COMMENT_DATABASE_HOST", "comment_db")
DB_PORT = int(os.environ.get("COMMENT_DATABASE_PORT", "27017"))
DB_NAME = os.environ.get("COMMENT_DATABASE", "comments")

app = Flask(__name__)
# Short timeouts: a missing database must make answers fail fast, not hang the callers.
mongo = MongoClient(
    DB_HOST,
    DB_PORT,
    serverSelectionTimeoutMS=1500,
    connectTimeoutMS=1500,
    socketTimeoutMS=3000,
    connect=False,
)
comments = mongo[DB_NAME]["comments"]
REQUESTS = Counter("comment_requests_total", "Requests served", ["endpoint", "status"])
LATENCY = Histogram("comment_request_seconds", "Request latency", ["endpoint"])
REQUIRED = ("post_id", "name", "body")


@app.before_request
def _start_timer() -> None:
    request.environ["started"] = time.monotonic()


@app.after_request
def _count(response):  # type: ignore[no-untyped-def]
    endpoint = request.url_rule.rule if request.url_rule else "unknown"
    REQUESTS.labels(endpoint, str(response.status_code)).inc()
    LATENCY.labels(endpoint).observe(time.monotonic() - request.environ.get("started", time.monotonic()))
    return response


@app.errorhandler(PyMongoError)
def _database_down(error: PyMongoError):  # type: ignore[no-untyped-def]
    return jsonify({"error": f"database {DB_HOST}:{DB_PORT} unavailable: {type(error).__name__}"}), 503


@app.get("/<post_id>/comments")
def list_comments(post_id: str):  # type: ignore[no-untyped-def]
    found = comments.find({"post_id": post_id}).sort("created_at", 1)
    return jsonify(
        [
            {
                "id": str(c["_id"]),
                "post_id": c["post_id"],
                "name": c.get("name", ""),
                "email": c.get("email", ""),
                "body": c.get("body", ""),
                "created_at": c.get("created_at", ""),
            }
            for c in found
        ]
    )


@app.post("/add_comment")
def add_comment():  # type: ignore[no-untyped-def]
    missing = [field for field in REQUIRED if not request.values.get(field, "").strip()]
    if missing:
        return jsonify({"error": f"required: {', '.join(missing)}"}), 400
    document = {field: request.values.get(field, "").strip() for field in (*REQUIRED, "email")}
    document["created_at"] = request.values.get("created_at") or str(time.time())
    inserted = comments.insert_one(document)
    return jsonify({"id": str(inserted.inserted_id)}), 201


@app.get("/healthcheck")
def healthcheck():  # type: ignore[no-untyped-def]
    if BROKEN:
        return jsonify({"status": 0, "dependent_services": {}, "version": VERSION, "broken": True}), 500
    if request.args.get("liveness"):
        return jsonify({"status": 1, "version": VERSION})
    try:
        mongo.admin.command("ping")
        database = 1
    except PyMongoError:
        database = 0
    return jsonify({"status": database, "dependent_services": {"commentdb": database}, "version": VERSION})


@app.get("/metrics")
def metrics():  # type: ignore[no-untyped-def]
    return generate_latest(), 200, {"Content-Type": CONTENT_TYPE_LATEST}


def stopped(signum: int, _frame: object) -> None:
    """Exit as a process stopped by a signal does (128 + its number), not 0: swarm counts a task
    that exits 0 as completed, even one it stopped for failing its healthcheck, and
    restart_policy on-failure then never replaces it (docs/engine-unhealthy-exit-zero.md).
    The development server would swallow the KeyboardInterrupt and exit 0."""
    sys.exit(128 + signum)


if __name__ == "__main__":
    signal.signal(signal.SIGINT, stopped)  # the image's STOPSIGNAL
    app.run(host="0.0.0.0", port=9292, threaded=True)
