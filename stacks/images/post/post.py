"""post: the reddit app's posts service (port 5000), storing posts in MongoDB."""

from __future__ import annotations

import os
import signal
import sys
import time

from bson.errors import InvalidId
from bson.objectid import ObjectId
from flask import Flask, abort, jsonify, request
from prometheus_client import CONTENT_TYPE_LATEST, Counter, Histogram, generate_latest
from pymongo import MongoClient
from pymongo.errors import PyMongoError

VERSION = os.environ.get("APP_VERSION", "dev")
BROKEN = os.environ.get("APP_BROKEN") == "1"
DB_HOST = os.environ.get("POST_DATABASE_HOST", "post_db")
DB_PORT = int(os.environ.get("POST_DATABASE_PORT", "27017"))
DB_NAME = os.environ.get("POST_DATABASE", "user_posts")

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
posts = mongo[DB_NAME]["posts"]
REQUESTS = Counter("post_requests_total", "Requests served", ["endpoint", "status"])
LATENCY = Histogram("post_request_seconds", "Request latency", ["endpoint"])


@app.before_request
def _start_timer() -> None:
    request.environ["started"] = time.monotonic()


@app.after_request
def _count(response):  # type: ignore[no-untyped-def]
    endpoint = request.url_rule.rule if request.url_rule else "unknown"
    REQUESTS.labels(endpoint, str(response.status_code)).inc()
    LATENCY.labels(endpoint).observe(time.monotonic() - request.environ.get("started", time.monotonic()))
    return response


def _public(post: dict) -> dict:
    return {
        "id": str(post["_id"]),
        "title": post.get("title", ""),
        "link": post.get("link", ""),
        "created_at": post.get("created_at", ""),
        "votes": int(post.get("votes", 0)),
    }


def _object_id(text: str) -> ObjectId:
    try:
        return ObjectId(text)
    except (InvalidId, TypeError):
        abort(404)


@app.errorhandler(PyMongoError)
def _database_down(error: PyMongoError):  # type: ignore[no-untyped-def]
    return jsonify({"error": f"database {DB_HOST}:{DB_PORT} unavailable: {type(error).__name__}"}), 503


@app.get("/posts")
def list_posts():  # type: ignore[no-untyped-def]
    return jsonify([_public(p) for p in posts.find().sort("created_at", -1)])


@app.get("/post/<post_id>")
def get_post(post_id: str):  # type: ignore[no-untyped-def]
    post = posts.find_one({"_id": _object_id(post_id)})
    if post is None:
        abort(404)
    return jsonify(_public(post))


@app.post("/add_post")
def add_post():  # type: ignore[no-untyped-def]
    title = request.values.get("title", "").strip()
    if not title:
        return jsonify({"error": "title is required"}), 400
    document = {
        "title": title,
        "link": request.values.get("link", "").strip(),
        "created_at": request.values.get("created_at") or str(time.time()),
        "votes": 0,
    }
    inserted = posts.insert_one(document)
    return jsonify({"id": str(inserted.inserted_id)}), 201


@app.post("/vote")
def vote():  # type: ignore[no-untyped-def]
    kind = request.values.get("type", "")
    step = {"1": 1, "up": 1, "-1": -1, "down": -1}.get(kind)
    if step is None:
        return jsonify({"error": "type must be 1 (up) or -1 (down)"}), 400
    result = posts.update_one({"_id": _object_id(request.values.get("id", ""))}, {"$inc": {"votes": step}})
    if result.matched_count == 0:
        abort(404)
    return jsonify({"ok": 1})


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
    return jsonify({"status": database, "dependent_services": {"postdb": database}, "version": VERSION})


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
    app.run(host="0.0.0.0", port=5000, threaded=True)
