"""The dashboard's FastAPI application and the ``tuneforge ui`` command.

Pages (``static/``, package data): ``/`` runs, ``/run?name=RUN``, ``/compare?runs=A&runs=B``, ``/launch``.
They draw everything from the JSON API below with their own small scripts (curves are inline SVG) and poll it
while runs train. Every response carries a Content-Security-Policy that lets a page load only from this server.

API (GET reads, POST acts; see :mod:`tuneforge.apps.ui.safety` for what is refused):

- ``GET /api/runs`` — the runs table (``tuneforge runs``' rows) plus runs the dashboard is starting
- ``GET /api/runs/{run}`` — run.json, the resolved recipe, evaluations, files, the dashboard's log of it
- ``GET /api/runs/{run}/metrics?offset=N`` — ``metrics.jsonl`` lines after byte N (curves grow from these)
- ``GET /api/runs/{run}/files/{path}`` — a file of the run (``report.html`` and images shown, the rest downloaded)
- ``GET /api/compare?runs=A&runs=B`` — metrics side by side and the recipe keys that differ
- ``GET /api/launch`` — recipe files, methods and model aliases for the form
- ``POST /api/validate``, ``/api/plan``, ``/api/launch`` — the form (JSON); errors come back per field
- ``POST /api/runs/{run}/stop`` (SIGINT, as Ctrl-C) and ``/api/runs/{run}/resume`` (``train --resume``)
"""

# No `from __future__ import annotations` here: FastAPI reads the handlers' annotations at runtime, and they
# name classes imported inside create_app.

import sys
from contextlib import asynccontextmanager
from importlib import resources
from pathlib import Path
from typing import Any, Callable

from tuneforge.apps.export.serve import check_port
from tuneforge.apps.runs import read_runs
from tuneforge.apps.ui import rundata
from tuneforge.apps.ui.launch import FormErrors, LaunchForms, LaunchRequest
from tuneforge.apps.ui.processes import Processes
from tuneforge.apps.ui.safety import TOKEN_COOKIE, Guard, Refused, confined
from tuneforge.base.errors import UserError
from tuneforge.base.models import ALIASES
from tuneforge.core.methods import method_names

DEFAULT_PORT = 7860
PAGES = {"/": "runs.html", "/run": "run.html", "/compare": "compare.html", "/launch": "launch.html"}
# Only this server: scripts, styles, images, frames and fetches. The report (self-contained, inline CSS and
# data: images) gets a stricter policy of its own.
CONTENT_SECURITY_POLICY = ("default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; "
                           "frame-src 'self'; connect-src 'self'; form-action 'self'; base-uri 'none'")
REPORT_POLICY = "sandbox; default-src 'none'; img-src data:; style-src 'unsafe-inline'"
SHOWN_INLINE = {".html": "text/html", ".png": "image/png", ".svg": "image/svg+xml"}


def static_folder() -> Path:
    return Path(str(resources.files("tuneforge.apps.ui") / "static"))


def create_app(runs_dir: str | Path, recipe_dirs: list[str | Path] | None = None, host: str = "127.0.0.1",
               guard: Guard | None = None):
    """The dashboard over ``runs_dir`` (created if missing), launching recipes from ``recipe_dirs``."""
    from fastapi import FastAPI, Request
    from fastapi.responses import FileResponse, JSONResponse
    from fastapi.staticfiles import StaticFiles

    runs = Path(runs_dir).resolve()
    runs.mkdir(parents=True, exist_ok=True)
    guard = guard or Guard.for_host(host)
    forms = LaunchForms([Path(d) for d in (recipe_dirs or [])], runs)
    processes = Processes(runs)
    static = static_folder()

    @asynccontextmanager
    async def lifespan(app):
        yield
        processes.shutdown()  # the dashboard stops: its runs checkpoint and stop, as after Ctrl-C

    app = FastAPI(title="tuneforge ui", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.processes = processes
    app.state.guard = guard

    @app.middleware("http")
    async def safety(request: Request, call_next):
        try:
            from_query = guard.check(request.method, {k.lower(): v for k, v in request.headers.items()},
                                     request.query_params.get("token"), request.cookies.get(TOKEN_COOKIE))
        except Refused as refused:
            return JSONResponse({"error": refused.message}, status_code=refused.status)
        response = await call_next(request)
        response.headers.setdefault("Content-Security-Policy", CONTENT_SECURITY_POLICY)
        response.headers["X-Content-Type-Options"] = "nosniff"
        response.headers["Referrer-Policy"] = "no-referrer"
        if from_query:
            response.set_cookie(TOKEN_COOKIE, guard.token, httponly=True, samesite="strict")
        return response

    def error(status: int, message: str, **extra: Any) -> JSONResponse:
        return JSONResponse({"error": message, **extra}, status_code=status)

    def run_folder(name: str) -> Path:
        """A run folder directly inside the runs folder, by name (nothing else: no ``..``, no sub-paths)."""
        if not name or "/" in name or "\\" in name or name in (".", "..") or name.startswith("."):
            raise Refused(403, f"{name!r}: not a run folder name")
        return confined(name, [runs])

    def guarded(handler: Callable[..., Any]) -> Any:
        try:
            return handler()
        except Refused as refused:
            return error(refused.status, refused.message)
        except FormErrors as problems:
            return error(422, "the form has problems", errors=problems.errors)
        except UserError as problem:
            return error(400, str(problem))

    def page_handler(page: str) -> Callable[[], Any]:
        def serve_page() -> FileResponse:
            return FileResponse(static / page, media_type="text/html")
        return serve_page

    for route, page in PAGES.items():
        app.add_api_route(route, page_handler(page), methods=["GET"], include_in_schema=False)
    app.mount("/static", StaticFiles(directory=static), name="static")

    def process_facts(name: str) -> dict[str, Any]:
        child = processes.get(name)
        if child is None:
            return {"launched": False, "alive": False}
        return {"launched": True, "alive": child.alive, "action": child.action, "pid": child.process.pid,
                "returncode": child.process.poll(), "stop_requested": child.stop_requested}

    def table_row(row: dict[str, Any]) -> dict[str, Any]:
        row = {k: v for k, v in row.items() if k != "path"}
        row["state"], row["note"] = rundata.display_status(row.get("status"))
        facts = process_facts(row["name"])
        if row.get("status") == "running" and facts["launched"] and not facts["alive"]:
            # the child is gone but run.json still says running: it was killed before it could say so
            row["state"], row["note"] = "failed", f"the training process ended with code {facts['returncode']}"
        row["process"] = facts
        row["can_stop"] = facts["alive"]
        row["can_resume"] = (not facts["alive"] and row["state"] in ("interrupted", "failed")
                             and any((runs / row["name"] / "checkpoints").glob("checkpoint-*")))
        return row

    @app.get("/api/runs")
    def list_runs() -> Any:
        def answer():
            rows = [table_row(r) for r in read_runs(runs)]
            listed = {r["name"] for r in rows}
            for child in processes.all():  # launched, but `train` has not written run.json yet (or never will)
                if child.run not in listed:
                    rows.append({"name": child.run, "status": None, "process": process_facts(child.run),
                                 "state": "starting" if child.alive else "failed",
                                 "note": None if child.alive else f"exited with code {child.process.poll()} "
                                                                  "before it wrote run.json (see its log)",
                                 "can_stop": child.alive, "can_resume": False})
            return {"runs_dir": str(runs), "runs": rows}
        return guarded(answer)

    @app.get("/api/runs/{name}")
    def run_details(name: str) -> Any:
        def answer():
            folder = run_folder(name)
            child = processes.get(name)
            if not folder.is_dir() and child is None:
                return error(404, f"{name}: no such run in {runs}")
            row = rundata.run_row(folder) if folder.is_dir() else None
            config_text, _ = rundata.read_config(folder) if folder.is_dir() else (None, {})
            return {"name": name, "row": table_row(row) if row else None, "status": rundata.read_status(folder),
                    "process": process_facts(name), "config": config_text,
                    "report": (folder / "report.html").is_file(),
                    "evaluations": rundata.read_evaluations(folder) if folder.is_dir() else [],
                    "files": rundata.list_files(folder) if folder.is_dir() else [],
                    "log": processes.log_tail(name)}
        return guarded(answer)

    @app.get("/api/runs/{name}/metrics")
    def run_metrics(name: str, offset: int = 0) -> Any:
        return guarded(lambda: rundata.read_metrics(run_folder(name), max(0, offset)))

    @app.get("/api/runs/{name}/files/{path:path}")
    def run_file(name: str, path: str, download: bool = False) -> Any:
        def answer():
            folder = run_folder(name)
            target = confined(path, [folder])
            if not target.is_file():
                return error(404, f"{name}/{path}: no such file")
            kind = SHOWN_INLINE.get(target.suffix.lower())
            if kind is None or download:
                return FileResponse(target, filename=target.name)  # a download (Content-Disposition: attachment)
            response = FileResponse(target, media_type=kind)
            if kind == "text/html":  # the run's report: no script, nothing from elsewhere
                response.headers["Content-Security-Policy"] = REPORT_POLICY
            return response
        return guarded(answer)

    @app.get("/api/compare")
    def compare_runs(request: Request) -> Any:
        def answer():
            names = request.query_params.getlist("runs")
            if len(names) < 2:
                return error(400, "compare: pick two or more runs (?runs=A&runs=B)")
            entries, configs = [], []
            for name in names:
                folder = run_folder(name)
                if not (folder / "run.json").is_file():
                    return error(404, f"{name}: no such run in {runs}")
                status = rundata.read_status(folder)
                configs.append(rundata.read_config(folder)[1])
                entries.append({"name": name, "row": table_row(rundata.run_row(folder) or {"name": name}),
                                "validation": status.get("validation") or {}, "test": status.get("test") or {}})
            return {"runs": entries, "differing_keys": rundata.differing_keys(configs)}
        return guarded(answer)

    @app.get("/api/launch")
    def launch_choices() -> Any:
        return guarded(lambda: {"recipes": forms.recipes(), "methods": method_names(), "aliases": sorted(ALIASES),
                                "recipe_dirs": [str(d) for d in forms.recipe_dirs], "runs_dir": str(runs)})

    async def form_of(request: Request) -> LaunchRequest:
        try:
            body = await request.json()
        except ValueError:
            raise Refused(400, "the body is not JSON") from None
        return LaunchRequest.from_json(body)

    def job_summary(job) -> dict[str, Any]:
        data = job.data
        return {"name": job.recipe.name, "task": job.recipe.task, "model": job.recipe.model,
                "model_type": job.model_config.model_type, "method": job.recipe.method.name,
                "epochs": job.recipe.train.epochs, "labels": len(data.label_names) if data.label_names else None,
                "rows": {"train": len(data.train), "validation": len(data.validation),
                         "test": len(data.test) if data.test else 0}, "notes": list(data.notes)}

    @app.post("/api/validate")
    async def validate(request: Request) -> Any:
        try:
            form = await form_of(request)
        except Refused as refused:
            return error(refused.status, refused.message)
        return await run_blocking(lambda: guarded(lambda: {"ok": True, "job": job_summary(forms.validate(form)[1])}))

    @app.post("/api/plan")
    async def plan(request: Request) -> Any:
        try:
            form = await form_of(request)
        except Refused as refused:
            return error(refused.status, refused.message)
        return await run_blocking(lambda: guarded(lambda: {"ok": True, "plan": forms.plan(form)}))

    @app.post("/api/launch")
    async def launch(request: Request) -> Any:
        try:
            form = await form_of(request)
        except Refused as refused:
            return error(refused.status, refused.message)

        def start():
            prepared, job = forms.validate(form)
            run_dir = forms.new_run_dir(job.recipe.name)
            processes.train(prepared.recipe_path, prepared.overrides, run_dir)
            return {"ok": True, "run": run_dir.name}
        return await run_blocking(lambda: guarded(start))

    @app.post("/api/runs/{name}/stop")
    def stop(name: str) -> Any:
        def answer():
            run_folder(name)
            try:
                processes.stop(name)
            except LookupError as missing:
                return error(409, str(missing))
            return {"ok": True, "run": name}
        return guarded(answer)

    @app.post("/api/runs/{name}/resume")
    def resume(name: str) -> Any:
        def answer():
            folder = run_folder(name)
            if not (folder / "run.json").is_file():
                return error(404, f"{name}: no such run in {runs}")
            row = table_row(rundata.run_row(folder))
            if not row["can_resume"]:
                return error(409, f"{name}: cannot resume a run whose status is {row.get('status')} "
                                  "(only an interrupted or failed run with a checkpoint, not running here)")
            try:
                processes.resume(folder)
            except RuntimeError as busy:
                return error(409, str(busy))
            return {"ok": True, "run": name}
        return guarded(answer)

    return app


async def run_blocking(work: Callable[[], Any]) -> Any:
    """Validation and planning load data and models: off the event loop, so pages keep polling meanwhile."""
    from starlette.concurrency import run_in_threadpool

    return await run_in_threadpool(work)


def serve_ui(runs_dir: str | Path, recipe_dirs: list[str | Path], host: str = "127.0.0.1", port: int = DEFAULT_PORT,
             log: Callable[[str], None] = lambda message: print(message, file=sys.stderr, flush=True)) -> None:
    """``tuneforge ui``: serve the dashboard until Ctrl-C (which also checkpoints and stops the runs it started)."""
    import uvicorn

    if not 1 <= port <= 65535:
        raise UserError(f"ui: --port must be 1-65535, got {port}")
    for folder in recipe_dirs:
        if not Path(folder).is_dir():
            raise UserError(f"ui: --recipes {folder}: folder not found")
    check_port(host, port)
    guard = Guard.for_host(host)
    app = create_app(runs_dir, recipe_dirs, host=host, guard=guard)
    shown = f"[{host}]" if ":" in host else host
    url = f"http://{shown}:{port}/"
    log(f"runs: {Path(runs_dir).resolve()}; recipes: {', '.join(str(Path(d).resolve()) for d in recipe_dirs)}")
    if guard.token is not None:
        log(f"warning: listening on {host}, reachable from other machines; every request needs the token below")
        url += f"?token={guard.token}"
    log(f"dashboard: {url}  (Ctrl+C stops it and checkpoints the runs it started)")
    uvicorn.run(app, host=host, port=port, log_level="warning", access_log=False)
