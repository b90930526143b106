"""HTTP JSON API and a small web page over a :class:`search.engine.Searcher` (FastAPI; run with uvicorn).

    GET  /                      the page: a query box and a grid of thumbnails with scores and captions
    GET  /api/search?q=..&k=..  top-k results (also POST /api/search with JSON {"q", "k", "hubness"})
    GET  /api/health            {"status": "ok", "videos": G}
    GET  /api/info              the index manifest (without the training config)
    GET  /thumb/{row}           the PNG thumbnail of index row ``row`` (an integer: no request path is ever
                                turned into a file path)

Bounds: a query is 1..MAX_QUERY_CHARS characters of valid UTF-8, k is 1..MAX_K, request bodies at most
MAX_BODY bytes; anything else is a 4xx with {"detail": message}. Searches run one at a time (a lock) so
concurrent requests cannot oversubscribe the CPU.
"""

import io
import threading
from typing import Any

import numpy as np

__all__ = ["create_app", "MAX_K", "MAX_QUERY_CHARS", "MAX_BODY"]

MAX_K = 100
MAX_QUERY_CHARS = 500
MAX_BODY = 16 * 1024

_PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>NeighborRetr search</title>
<style>body{font-family:sans-serif;margin:1em}#grid{display:flex;flex-wrap:wrap;gap:8px}
.hit{width:180px;font-size:12px}.hit img{width:176px;image-rendering:pixelated;border:1px solid #ccc}</style>
</head><body>
<form id="f"><input id="q" name="q" size="60" placeholder="a dog catches a frisbee on a beach" autofocus>
<input id="k" name="k" type="number" value="12" min="1" max="%(max_k)d"><button id="go" type="submit">Search</button></form>
<div id="status"></div><div id="grid"></div>
<script>
const f = document.getElementById('f');
async function run(q, k) {
  const st = document.getElementById('status'), grid = document.getElementById('grid');
  grid.innerHTML = '';
  const r = await fetch('/api/search?' + new URLSearchParams({q: q, k: k}));
  const body = await r.json();
  if (!r.ok) { st.textContent = 'error: ' + body.detail; return; }
  st.textContent = body.results.length + ' results for "' + body.query + '"';
  for (const h of body.results) {
    const d = document.createElement('div'); d.className = 'hit';
    const img = document.createElement('img'); img.src = h.thumbnail; img.alt = h.key;
    const c = document.createElement('div');
    c.textContent = h.score.toFixed(4) + ' ' + h.key + ': ' + (h.captions[0] || '');
    d.appendChild(img); d.appendChild(c); grid.appendChild(d);
  }
}
f.addEventListener('submit', e => { e.preventDefault();
  run(document.getElementById('q').value, document.getElementById('k').value); });
const p = new URLSearchParams(location.search);
if (p.get('q')) { document.getElementById('q').value = p.get('q'); run(p.get('q'), p.get('k') || 12); }
</script></body></html>
"""


def create_app(searcher: Any, *, candidates: int = 200, hubness: str = "none") -> Any:
    """The FastAPI app serving ``searcher``'s index."""
    from fastapi import FastAPI, HTTPException, Request
    from fastapi.responses import HTMLResponse, JSONResponse, Response
    from starlette.middleware.base import BaseHTTPMiddleware

    from search.engine import HUBNESS

    app = FastAPI(title="NeighborRetr search", docs_url=None, redoc_url=None, openapi_url=None)
    lock = threading.Lock()
    index = searcher.index

    class _BodyLimit(BaseHTTPMiddleware):
        async def dispatch(self, request: Request, call_next):  # type: ignore[override]
            size = request.headers.get("content-length")
            if size is not None and (not size.isdigit() or int(size) > MAX_BODY):
                return JSONResponse({"detail": f"request body larger than {MAX_BODY} bytes"}, status_code=413)
            return await call_next(request)

    app.add_middleware(_BodyLimit)

    def _check(q: Any, k: Any, hub: Any) -> tuple[str, int, str]:
        if not isinstance(q, str):
            raise HTTPException(422, "q must be a string")
        if "\ufffd" in q:
            raise HTTPException(400, "q is not valid UTF-8")
        q = q.strip()
        if not q:
            raise HTTPException(400, "q is empty")
        if len(q) > MAX_QUERY_CHARS:
            raise HTTPException(400, f"q is longer than {MAX_QUERY_CHARS} characters")
        try:
            k = int(k)
        except (TypeError, ValueError):
            raise HTTPException(422, f"k must be an integer in 1..{MAX_K}") from None
        if not 1 <= k <= MAX_K:
            raise HTTPException(400, f"k must be in 1..{MAX_K}, got {k}")
        if hub not in HUBNESS:
            raise HTTPException(400, f"hubness must be one of {list(HUBNESS)}")
        if hub != "none" and index.bank is None:
            raise HTTPException(400, "this index has no query bank: hubness correction is unavailable")
        return q, k, hub

    def _search(q: str, k: int, hub: str) -> dict[str, Any]:
        with lock:
            hits = searcher.search([q], k=k, candidates=candidates, hubness=hub)[0]
        return {
            "query": q,
            "hubness": hub,
            "results": [
                {
                    "row": h.row,
                    "key": h.key,
                    "video_id": h.video_id,
                    "score": h.score,
                    "captions": h.captions,
                    "thumbnail": f"/thumb/{h.row}",
                }  # fmt: skip
                for h in hits
            ],
        }

    @app.get("/", response_class=HTMLResponse)
    def page() -> str:
        return _PAGE % {"max_k": MAX_K}

    @app.get("/api/health")
    def health() -> dict[str, Any]:
        return {"status": "ok", "videos": index.size}

    @app.get("/api/info")
    def info() -> dict[str, Any]:
        return {k: v for k, v in index.manifest.items() if k != "config"}

    @app.get("/api/search")
    def search_get(q: str = "", k: str = "10", hubness: str | None = None) -> dict[str, Any]:
        return _search(*_check(q, k, hubness or globals_hub))

    @app.post("/api/search")
    async def search_post(request: Request) -> dict[str, Any]:
        raw = await request.body()
        if len(raw) > MAX_BODY:
            raise HTTPException(413, f"request body larger than {MAX_BODY} bytes")
        import json

        try:
            body = json.loads(raw.decode("utf-8"))
        except UnicodeDecodeError:
            raise HTTPException(400, "request body is not valid UTF-8") from None
        except ValueError as e:
            raise HTTPException(400, f"request body is not JSON: {e}") from None
        if not isinstance(body, dict):
            raise HTTPException(400, "request body must be a JSON object {q, k, hubness}")
        return _search(*_check(body.get("q"), body.get("k", 10), body.get("hubness", globals_hub)))

    @app.get("/thumb/{row}")
    def thumb(row: int) -> Response:
        if not 0 <= row < index.size:
            raise HTTPException(404, f"no video at row {row}")
        from PIL import Image

        buf = io.BytesIO()
        Image.fromarray(np.ascontiguousarray(index.thumbnail(row))).save(buf, format="PNG")
        return Response(buf.getvalue(), media_type="image/png")

    globals_hub = hubness
    return app
