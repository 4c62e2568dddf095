"""Who may write to ``biglm annotate``'s answers file (issue 25: any web page could delete annotations). A write
needs the page's session token, the annotator's token, a JSON body and an allowed Origin and Host; undo takes back
only the caller's own answers, whatever name is typed. Last, a page of another origin tries the forged writes a
real browser would send (a text/plain fetch, a JSON fetch, a form post) and the file does not change."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import requests

from biglm.annotate.app import Annotation, annotation_app
from biglm.annotate.pairs import PairPool
from biglm.annotate.store import AnswerStore
from serving import browser, served
from test_annotate import PAIRS, Annotator, read_back


def alice_answers_two(url: str) -> Annotator:
    alice = Annotator(url, "alice")
    for pair in PAIRS[:2]:
        assert alice.answer(pair.key, "A").status_code == 200
    return alice


def test_forged_and_foreign_writes_are_refused(tmp_path):
    store = AnswerStore(tmp_path / "prefs.jsonl")
    with served(annotation_app(Annotation(store, PairPool(PAIRS)))) as server:
        alice = alice_answers_two(server.url)
        undo = f"{server.url}/api/undo"
        body = json.dumps({"annotator": "alice"})
        # The probe: text/plain from another site's page, repeated.
        for _ in range(3):
            r = requests.post(undo, data=body, timeout=30,
                              headers={"Content-Type": "text/plain", "Origin": "http://evil.example"})
            assert r.status_code == 403
        cross = requests.post(undo, data=body, timeout=30, headers={
            **alice.headers(), "Content-Type": "application/json", "Origin": "http://evil.example"})
        assert cross.status_code == 403  # even with alice's tokens, from another site's page
        text = requests.post(undo, data=body, headers={**alice.headers(), "Content-Type": "text/plain"}, timeout=30)
        assert text.status_code == 415
        rebound = requests.post(undo, json={"annotator": "alice"}, timeout=30,
                                headers={**alice.headers(), "Host": f"evil.example:{server.port}"})
        assert rebound.status_code == 400  # DNS rebinding
        no_session = requests.post(undo, json={"annotator": "alice"}, timeout=30,
                                   headers={"X-Biglm-Annotator": alice.token})
        assert no_session.status_code == 403 and no_session.json()["error"]["type"] == "invalid_session"
        forged = Annotator(server.url, "alice", alice.token, session=alice.session.split(".")[0] + ".0123abcd")
        assert forged.undo().status_code == 403  # a session token this server did not issue
        no_token = requests.post(undo, json={"annotator": "alice"}, timeout=30,
                                 headers={"X-Biglm-Session": alice.session})
        assert no_token.status_code == 400 and "X-Biglm-Annotator" in no_token.json()["error"]["message"]
        assert alice.state()["done"] == 2
    store.close()
    assert [p.annotator for p in read_back(tmp_path / "prefs.jsonl")] == ["human:alice"] * 2  # nothing removed


def test_undo_takes_back_only_ones_own_answers(tmp_path):
    store = AnswerStore(tmp_path / "prefs.jsonl")
    with served(annotation_app(Annotation(store, PairPool(PAIRS)))) as server:
        alice = alice_answers_two(server.url)
        mallory = Annotator(server.url, "alice")  # types the same name, has her own token
        assert mallory.state()["done"] == 0 and not mallory.state()["can_undo"]  # her own progress
        r = mallory.undo()
        assert r.status_code == 409 and "nothing to undo" in r.json()["error"]["message"]
        assert mallory.answer(PAIRS[0].key, "B").status_code == 200  # she may judge the pair herself
        assert mallory.undo().status_code == 200  # and take back her answer, not alice's
        assert alice.state()["done"] == 2
        assert alice.undo().json()["undone"]["choice"] == "A"
        assert alice.state()["done"] == 1
    store.close()
    saved = [json.loads(line) for line in (tmp_path / "prefs.jsonl").read_text().splitlines()]
    assert [r["annotator"] for r in saved] == ["human:alice"]  # the typed name is saved with the answer
    assert saved[0]["annotator_id"].startswith("token:") and alice.token not in json.dumps(saved)  # a digest


EVIL_PAGE = """<!doctype html><html><body><form id="f" method="POST" enctype="text/plain" action="{url}/api/undo">
<input name='{{"annotator": "alice", "x": "' value='"}}'></form><p id="out"></p><script>
const out = [];
const say = (what) => {{ out.push(what); document.getElementById("out").textContent = out.join(" "); }};
fetch("{url}/api/undo", {{method: "POST", headers: {{"Content-Type": "text/plain"}}, mode: "no-cors",
  body: JSON.stringify({{annotator: "alice"}})}}).then(() => say("plain-sent"), () => say("plain-failed"));
fetch("{url}/api/undo", {{method: "POST", headers: {{"Content-Type": "application/json"}},
  body: JSON.stringify({{annotator: "alice"}})}}).then(() => say("json-read"), () => say("json-blocked"));
fetch("{url}/api/session").then((r) => r.json()).then(() => say("session-read"), () => say("session-blocked"));
</script></body></html>"""


def test_a_forged_write_from_another_origins_page_fails_in_a_real_browser(tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    page = browser()
    store = AnswerStore(tmp_path / "prefs.jsonl")
    try:
        with served(annotation_app(Annotation(store, PairPool(PAIRS)))) as server:
            alice_answers_two(server.url)
            html = EVIL_PAGE.format(url=server.url).encode()

            class Evil(BaseHTTPRequestHandler):
                def do_GET(self) -> None:
                    self.send_response(200)
                    self.send_header("Content-Type", "text/html")
                    self.send_header("Content-Length", str(len(html)))
                    self.end_headers()
                    self.wfile.write(html)

                def log_message(self, *args) -> None:
                    pass

            evil = ThreadingHTTPServer(("127.0.0.1", 0), Evil)  # another origin: another port
            threading.Thread(target=evil.serve_forever, daemon=True).start()
            try:
                page.get(f"http://127.0.0.1:{evil.server_address[1]}/")
                WebDriverWait(page, 30).until(lambda p: len(p.find_element(By.ID, "out").text.split()) == 3)
                seen = set(page.find_element(By.ID, "out").text.split())
                assert seen == {"plain-sent", "json-blocked", "session-blocked"}  # nothing readable crossed
                page.find_element(By.ID, "f").submit()  # the form post navigates to the server's answer
                WebDriverWait(page, 30).until(lambda p: "/api/undo" in p.current_url)
                assert "not allowed" in page.page_source  # refused: 403
            finally:
                evil.shutdown()
                evil.server_close()
    finally:
        page.quit()
        store.close()
    assert [p.annotator for p in read_back(tmp_path / "prefs.jsonl")] == ["human:alice"] * 2  # nothing removed
