"""ui: the reddit app's web front (port 9292), talking to post and comment over HTTP."""

from __future__ import annotations

import os
import signal
import socket
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import requests
from flask import Flask, abort, redirect, render_template_string, request
from prometheus_client import CONTENT_TYPE_LATEST, Counter, Histogram, generate_latest

VERSION = os.environ.get("APP_VERSION", "dev")
BROKEN = os.environ.get("APP_BROKEN") == "1"
ENV = os.environ.get("ENV", "local")
HOSTNAME = os.environ.get("HOSTNAME") or socket.gethostname()


def _base(service: str, default_port: str) -> str:
    host = os.environ.get(f"{service.upper()}_SERVICE_HOST", service)
    return f"http://{host}:{os.environ.get(f'{service.upper()}_SERVICE_PORT', default_port)}"


POST = _base("post", "5000")
COMMENT = _base("comment", "9292")
TIMEOUT = 2.0  # a dependency that doesn't answer in time is reported, never waited on

app = Flask(__name__)
REQUESTS = Counter("ui_requests_total", "Requests served", ["endpoint", "status"])
LATENCY = Histogram("ui_request_seconds", "Request latency", ["endpoint"])
DEPENDENCY_ERRORS = Counter("ui_dependency_errors_total", "Failed calls to post or comment", ["service"])

PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>Microservices Reddit :: {{ env }}</title></head>
<body>
<h1>Microservices Reddit in {{ env }} {{ hostname }} container</h1>
<p><a href="/">All posts</a> | <a href="/new">New post</a></p>
{% for problem in problems %}<p class="alert">{{ problem }}</p>{% endfor %}
{% block content %}{% endblock %}
</body></html>"""

INDEX = PAGE.replace(
    "{% block content %}{% endblock %}",
    """
<ul class="posts">
{% for post in posts %}
  <li class="post" id="post-{{ post.id }}">
    <form method="post" action="/post/{{ post.id }}/vote/1" style="display:inline"><button>+</button></form>
    <span class="votes">{{ post.votes }}</span>
    <form method="post" action="/post/{{ post.id }}/vote/-1" style="display:inline"><button>-</button></form>
    <a href="/post/{{ post.id }}">{{ post.title }}</a> <small>{{ post.link }}</small>
  </li>
{% else %}
  <li>No posts yet.</li>
{% endfor %}
</ul>""",
)

NEW = PAGE.replace(
    "{% block content %}{% endblock %}",
    """
<form method="post" action="/new">
  <input name="title" placeholder="Title"> <input name="link" placeholder="Link">
  <button>Post</button>
</form>""",
)

SHOW = PAGE.replace(
    "{% block content %}{% endblock %}",
    """
{% if post %}
<h2 class="title">{{ post.title }}</h2>
<p><a href="{{ post.link }}">{{ post.link }}</a> · <span class="votes">{{ post.votes }}</span> votes</p>
<ul class="comments">
{% for comment in comments %}<li class="comment"><b>{{ comment.name }}</b>: {{ comment.body }}</li>
{% else %}<li>No comments yet.</li>{% endfor %}
</ul>
<form method="post" action="/post/{{ post.id }}/comment">
  <input name="name" placeholder="Name"> <input name="email" placeholder="Email">
  <input name="body" placeholder="Comment"> <button>Comment</button>
</form>
{% endif %}""",
)


@app.before_request
def _start_timer() -> None:
    request.environ["started"] = time.monotonic()


@app.after_request
def _count(response):  # type: ignore[no-untyped-def]
    endpoint = request.url_rule.rule if request.url_rule else "unknown"
    REQUESTS.labels(endpoint, str(response.status_code)).inc()
    LATENCY.labels(endpoint).observe(time.monotonic() - request.environ.get("started", time.monotonic()))
    return response


def call(service: str, method: str, path: str, **kwargs):  # type: ignore[no-untyped-def]
    """(json, None) from post or comment, or (None, a sentence for the page) when it failed."""
    base = POST if service == "post" else COMMENT
    try:
        response = requests.request(method, base + path, timeout=TIMEOUT, **kwargs)
        response.raise_for_status()
        return response.json(), None
    except (requests.RequestException, ValueError) as exc:
        DEPENDENCY_ERRORS.labels(service).inc()
        return None, f"The {service} service is unavailable ({type(exc).__name__}); try again later."


def render(template: str, problems: list[str], **context):  # type: ignore[no-untyped-def]
    return render_template_string(template, env=ENV, hostname=HOSTNAME, problems=problems, **context)


@app.get("/")
def index():  # type: ignore[no-untyped-def]
    posts, problem = call("post", "GET", "/posts")
    return render(INDEX, [problem] if problem else [], posts=posts or [])


@app.get("/new")
def new_form():  # type: ignore[no-untyped-def]
    return render(NEW, [])


@app.post("/new")
def new_post():  # type: ignore[no-untyped-def]
    data = {
        "title": request.form.get("title", ""),
        "link": request.form.get("link", ""),
        "created_at": str(time.time()),
    }
    created, problem = call("post", "POST", "/add_post", data=data)
    if problem:
        return render(NEW, [problem]), 503
    return redirect(f"/post/{created['id']}", code=303)


@app.post("/post/<post_id>/vote/<kind>")
def vote(post_id: str, kind: str):  # type: ignore[no-untyped-def]
    _, problem = call("post", "POST", "/vote", data={"id": post_id, "type": kind})
    if problem:
        return render(INDEX, [problem], posts=[]), 503
    return redirect("/", code=303)


@app.get("/post/<post_id>")
def show(post_id: str):  # type: ignore[no-untyped-def]
    post, problem = call("post", "GET", f"/post/{post_id}")
    problems = [problem] if problem else []
    comments = []
    if post is not None:
        comments, comment_problem = call("comment", "GET", f"/{post_id}/comments")
        problems += [comment_problem] if comment_problem else []
    return render(SHOW, problems, post=post, comments=comments or [])


@app.post("/post/<post_id>/comment")
def comment(post_id: str):  # type: ignore[no-untyped-def]
    if not request.form.get("body", "").strip():
        abort(400)
    data = {
        "post_id": post_id,
        "name": request.form.get("name", "") or "anonymous",
        "email": request.form.get("email", ""),
        "body": request.form.get("body", ""),
        "created_at": str(time.time()),
    }
    _, problem = call("comment", "POST", "/add_comment", data=data)
    if problem:
        return render(SHOW, [problem], post=None, comments=[]), 503
    return redirect(f"/post/{post_id}", code=303)


def _dependency_status(base: str) -> int:
    """1 when the service at ``base`` answers its own /healthcheck with status 1, else 0."""
    try:
        answer = requests.get(f"{base}/healthcheck", timeout=TIMEOUT)
        return 1 if answer.ok and answer.json().get("status") == 1 else 0
    except (requests.RequestException, ValueError):
        return 0


@app.get("/healthcheck")
def healthcheck():  # type: ignore[no-untyped-def]
    if BROKEN:
        return {"status": 0, "dependent_services": {}, "version": VERSION, "broken": True}, 500
    if request.args.get("liveness"):
        return {"status": 1, "version": VERSION}
    # Both asked at once: a dependency that times out costs TIMEOUT once, not once per service.
    with ThreadPoolExecutor(max_workers=2) as pool:
        dependencies = dict(
            zip(("post", "comment"), pool.map(_dependency_status, (POST, COMMENT)), strict=True)
        )
    status = 1 if all(dependencies.values()) else 0
    return {"status": status, "dependent_services": dependencies, "version": VERSION}


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
