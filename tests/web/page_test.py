"""The web page, used as a person would, in Debian's Chromium driven by Playwright.

Usage: page_test.py URL ADMIN_KEY SCREENSHOT_DIR [--tiny]

Against `mochi up --backend simulated` (the full walk) or, with --tiny, against the embedded
tiny model (sign in, one small job to a playing video, download). Prints "all checks passed"
at the end; any failed check raises.
"""

import json
import os
import pathlib
import sys
import time
import urllib.error
import urllib.request

from axe_playwright_python.sync_playwright import Axe
from playwright.sync_api import expect, sync_playwright

URL, ADMIN_KEY, SHOTS = sys.argv[1], sys.argv[2], pathlib.Path(sys.argv[3])
TINY = "--tiny" in sys.argv[4:]
DOCS_SHOT = os.environ.get("MOCHI_DOCS_SCREENSHOT")
CHROMIUM = os.environ.get("MOCHI_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]
SHOTS.mkdir(parents=True, exist_ok=True)
PREFIX = "tiny-" if TINY else ""
RUN = str(int(time.time() * 1000) % 10**9)  # tenants of their own on every run


def api(method, path, key, body=None):
    """One API call: (status, parsed JSON or raw bytes)."""
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(URL + path, data=data, method=method)
    request.add_header("Authorization", f"Bearer {key}")
    if data is not None:
        request.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            raw, status, kind = response.read(), response.status, response.headers.get("content-type", "")
    except urllib.error.HTTPError as error:
        raw, status, kind = error.read(), error.code, error.headers.get("content-type", "")
    return status, (json.loads(raw) if "json" in kind else raw)


def new_key(tenant, role):
    status, created = api("POST", "/v1/admin/keys", ADMIN_KEY, {"tenant": tenant, "role": role, "name": "web test"})
    assert status == 201 or status == 200, (status, created)
    return created["key"]


def wait_until(page, function, timeout=30_000):
    """Polls a JavaScript function until it returns true (Playwright's own wait_for_function
    evaluates strings inside the page, which the page's CSP rightly forbids)."""
    deadline = time.monotonic() + timeout / 1000
    while True:
        if page.evaluate(function):
            return
        assert time.monotonic() < deadline, f"timed out waiting for {function}"
        time.sleep(0.05)


def shot(page, name, full=True):
    page.screenshot(path=str(SHOTS / f"{PREFIX}{name}.png"), full_page=full)
    print(f"screenshot {PREFIX}{name}.png", flush=True)


problems = []  # console errors, CSP violations, uncaught exceptions


refusals = []  # (status, method, path) of every API answer >= 400 the page received


def on_console(message):
    # Chromium logs every 4xx as a failed resource; those are checked by status below.
    if message.type == "error" and not message.text.startswith("Failed to load resource"):
        problems.append(f"console error: {message.text}")


def on_response(response):
    if response.status >= 400:
        path = response.url[len(URL):] if response.url.startswith(URL) else response.url
        refusals.append((response.status, response.request.method, path.split("?")[0]))
        try:
            print(f"refusal {response.status} {response.request.method} {path}: {response.text()}", flush=True)
        except Exception:  # the body of a stream cut short
            pass


def watch(page):
    page.on("console", on_console)
    page.on("pageerror", lambda e: problems.append(f"page error: {e}"))
    page.on("response", on_response)


def check_accessibility(page, what):
    results = Axe().run(page, options={"resultTypes": ["violations"]})
    bad = [v for v in results.response["violations"] if v.get("impact") in ("serious", "critical")]
    report = "\n".join(f"{v['id']} ({v['impact']}): {v['help']} at {[n['target'] for n in v['nodes']]}" for v in bad)
    assert not bad, f"axe found serious or critical violations on {what}:\n{report}"
    others = [f"{v['id']} ({v.get('impact')})" for v in results.response["violations"]]
    print(f"axe on {what}: no serious or critical violations; minor: {others or 'none'}", flush=True)


def sign_in(page, key):
    """Signs in with the keyboard alone: type the key, Enter."""
    page.goto(URL + "/")
    page.locator("#api-key").focus()
    page.keyboard.type(key)
    page.keyboard.press("Enter")
    expect(page.locator("#workspace")).to_be_visible()
    expect(page.locator("#session")).to_be_visible()


def record_progress(page):
    page.evaluate("""() => {
        window.__progress = [];
        const bar = document.getElementById('job-progress');
        new MutationObserver(() => window.__progress.push(Number(bar.value)))
            .observe(bar, { attributes: true, attributeFilter: ['value'] });
    }""")


def fill_form(page, prompt, frames=None, size=None, steps=None):
    page.fill("#prompt", prompt)
    if frames is not None:
        page.check("#length-frames")
        page.fill("#num_frames", str(frames))
    if size is not None:
        page.select_option("#resolution", "custom")
        page.fill("#width", str(size[0]))
        page.fill("#height", str(size[1]))
    if steps is not None:
        page.fill("#steps", str(steps))


def wait_playing(page):
    """The video element can play and its time advances when played."""
    player = page.locator("#player")
    expect(player).to_be_visible(timeout=120_000)
    wait_until(page, "() => document.getElementById('player').readyState >= 2")
    page.evaluate("() => { const v = document.getElementById('player'); v.muted = true; return v.play(); }")
    wait_until(page, "() => document.getElementById('player').currentTime > 0.2", 15_000)
    # Seeking: the server answers ranges, so the element can jump.
    seekable = page.evaluate("() => { const v = document.getElementById('player'); return v.seekable.length > 0 && v.seekable.end(0) > 0; }")
    assert seekable, "the video is not seekable"


def job_id_shown(page):
    return page.evaluate("() => document.getElementById('player').dataset.job || null")


def check_download(page, key, job_id):
    with page.expect_download() as info:
        page.click("#download")
    path = info.value.path()
    downloaded = pathlib.Path(path).read_bytes()
    status, from_api = api("GET", f"/v1/videos/{job_id}/content", key)
    assert status == 200, status
    assert downloaded == from_api, f"download ({len(downloaded)} B) differs from the API's ({len(from_api)} B)"
    assert downloaded[4:8] == b"ftyp", "the download is not an MP4"
    print(f"download: {len(downloaded)} bytes, the same as the API's", flush=True)


def progress_moved(page):
    values = page.evaluate("() => window.__progress")
    middle = sorted({v for v in values if 0 < v < 100})
    assert len(middle) >= 2, f"the progress bar did not move through intermediate values: {values}"
    assert values and values[-1] == 100, f"the progress bar did not reach 100: {values}"
    print(f"progress bar: {len(values)} updates, intermediate values {middle[:5]}…{middle[-3:]}", flush=True)


def latest_job(key, prompt):
    status, page = api("GET", "/v1/videos?limit=20", key)
    assert status == 200
    matches = [v for v in page["data"] if v["prompt"] == prompt]
    assert matches, f"no job with prompt {prompt!r}"
    return matches[0]


def tiny_walk(browser):
    key = new_key(f"tiny{RUN}", "submitter")
    context = browser.new_context(viewport={"width": 1280, "height": 900}, accept_downloads=True)
    page = context.new_page()
    watch(page)
    sign_in(page, key)
    prompt = "a small red square drifting over a blue field"
    fill_form(page, prompt, frames=25, size=(128, 128), steps=200)
    expect(page.locator("#estimate")).to_contain_text("lane", timeout=10_000)
    record_progress(page)
    page.click("#submit")
    wait_playing(page)
    shot(page, "01-tiny-model-video")
    progress_moved(page)
    check_download(page, key, job_id_shown(page))
    context.close()


def full_walk(browser):
    alice = new_key(f"alice{RUN}", "submitter")
    bob = new_key(f"bob{RUN}", "submitter")

    context = browser.new_context(viewport={"width": 1280, "height": 900}, accept_downloads=True)
    page = context.new_page()
    watch(page)
    page.on("dialog", lambda dialog: dialog.accept())

    # The page and its security headers.
    response = page.goto(URL + "/")
    headers = response.headers
    csp = headers.get("content-security-policy", "")
    assert "script-src 'self'" in csp and "unsafe-inline" not in csp, csp
    assert headers.get("x-content-type-options") == "nosniff"
    assert headers.get("x-frame-options") == "DENY"
    expect(page.locator("#signin")).to_be_visible()
    shot(page, "01-sign-in")
    check_accessibility(page, "the sign-in form")

    # A wrong key: the API's own sentence next to the field.
    _, wrong = api("GET", "/v1/videos?limit=1", "mk_live_not_a_real_key")
    page.fill("#api-key", "mk_live_not_a_real_key")
    page.click("#signin-form button[type=submit]")
    expect(page.locator("#api-key-error")).to_have_text(wrong["error"]["message"])
    assert page.locator("#api-key").get_attribute("aria-invalid") == "true"
    shot(page, "02-wrong-key")

    # Keyboard: from the key field, Tab reaches the sign-in button.
    page.locator("#api-key").focus()
    page.keyboard.press("Tab")
    assert page.evaluate("document.activeElement.textContent") == "Sign in"

    sign_in(page, alice)
    assert page.evaluate(f"sessionStorage.getItem('mochi.apiKey') === {json.dumps(alice)}")

    # Defaults are the API's.
    assert page.input_value("#steps") == "64"
    assert page.input_value("#guidance_scale") == "4.5"
    assert page.input_value("#fps") == "30"
    assert page.input_value("#resolution") == "480p"

    # A bad field: the API's sentence next to it, nothing created.
    page.fill("#prompt", "a lighthouse in a storm")
    page.fill("#steps", "500")
    _, refused = api("POST", "/v1/videos/estimate", alice, {"prompt": "x", "steps": 500})
    page.click("#submit")
    expect(page.locator("#steps-error")).to_have_text(refused["error"]["message"])
    assert page.locator("#steps").get_attribute("aria-invalid") == "true"
    shot(page, "03-bad-field")
    status, listed = api("GET", "/v1/videos", alice)
    assert status == 200 and listed["data"] == [], "a refused job was created"

    # The estimate, before submitting.
    first_prompt = "a red fox running through fresh snow"
    page.fill("#steps", "64")
    page.fill("#prompt", first_prompt)
    expect(page.locator("#steps-error")).to_have_text("")
    expect(page.locator("#estimate")).to_contain_text("lane", timeout=10_000)
    estimate_text = page.inner_text("#estimate")
    assert "peak memory" in estimate_text and "per step" in estimate_text, estimate_text
    shot(page, "04-estimate")

    # Submit; follow the progress to a playing video.
    record_progress(page)
    page.click("#submit")
    expect(page.locator("#job")).to_be_visible()
    assert page.evaluate("document.activeElement.id") == "job-title", "focus did not move to the job"
    wait_until(page, "() => { const v = document.getElementById('job-progress').value; return v > 10 && v < 90; }", 60_000)
    expect(page.locator("#job-steps")).to_contain_text("Step")
    shot(page, "05-progress")
    wait_playing(page)
    progress_moved(page)
    first = job_id_shown(page)
    assert first == latest_job(alice, first_prompt)["id"]
    expect(page.locator("#job-state")).to_have_text("Completed")
    shot(page, "06-completed")
    if DOCS_SHOT:
        page.screenshot(path=DOCS_SHOT, full_page=False)
        print(f"docs screenshot written to {DOCS_SHOT}", flush=True)
    check_accessibility(page, "the page with a finished video")
    check_download(page, alice, first)

    # A second job, cancelled while it waits or runs.
    second_prompt = "a slow timelapse of clouds over mountains"
    page.fill("#prompt", second_prompt)
    page.fill("#duration_s", "6")
    page.fill("#steps", "200")
    page.fill("#seed", "18446744073709551615")  # beyond a JavaScript number's exact range
    page.click("#submit")
    expect(page.locator("#job-prompt")).to_have_text(second_prompt)
    expect(page.locator("#job-meta")).to_contain_text("seed 18446744073709551615")
    expect(page.locator("#cancel")).to_be_visible()
    page.click("#cancel")
    expect(page.locator("#job-state")).to_have_text("Cancelled", timeout=20_000)
    second = latest_job(alice, second_prompt)
    assert second["state"] == "cancelled", second["state"]
    assert second["seed"] == 18446744073709551615, second["seed"]
    shot(page, "07-cancelled")

    # History: both jobs, with a thumbnail for the finished one; the filter; opening one.
    page.click("#history-refresh")
    items = page.locator(".history-item")
    expect(items).to_have_count(2)
    ids = items.evaluate_all("els => els.map(e => e.dataset.id)")
    assert set(ids) == {first, second["id"]}, ids
    thumb = page.locator(f".history-item[data-id='{first}'] img.thumb")
    expect(thumb).to_be_visible()
    wait_until(page, f"() => document.querySelector(\".history-item[data-id='{first}'] img\").naturalWidth > 0")
    shot(page, "08-history")
    page.select_option("#history-filter", "completed")
    expect(items).to_have_count(1)
    expect(items.first).to_have_attribute("data-id", first)
    page.select_option("#history-filter", "failed")
    expect(items.first).to_have_attribute("data-id", second["id"])
    expect(items).to_have_count(1)
    page.select_option("#history-filter", "")
    expect(items).to_have_count(2)
    page.click(f".history-item[data-id='{first}']")
    expect(page.locator("#job-prompt")).to_have_text(first_prompt)
    wait_playing(page)

    # Remix: same seed, new prompt; then delete the remix.
    remix_prompt = "a red fox running through fresh snow at night"
    page.fill("#remix-prompt", remix_prompt)
    page.click("#remix-form button[type=submit]")
    expect(page.locator("#job-prompt")).to_have_text(remix_prompt)
    remixed = latest_job(alice, remix_prompt)
    _, original = api("GET", f"/v1/videos/{first}", alice)
    assert remixed["seed"] == original["seed"] and remixed["remixed_from_video_id"] == first
    wait_playing(page)
    page.click("#delete")
    expect(page.locator("#job")).to_be_hidden()
    status, _ = api("GET", f"/v1/videos/{remixed['id']}", alice)
    assert status == 404, f"the deleted remix answers {status}"
    expect(items).to_have_count(2)

    # Paging: more jobs than one page.
    for n in range(8):
        status, _ = api("POST", "/v1/videos", alice, {"prompt": f"filler {n}", "steps": 2, "num_frames": 7})
        assert status == 202, status
    page.click("#history-refresh")
    expect(items).to_have_count(8)
    expect(page.locator("#history-older")).to_be_enabled()
    page.click("#history-older")
    expect(page.locator("#history-page")).to_have_text("Page 2")
    expect(items).to_have_count(2)
    page.click("#history-newer")
    expect(page.locator("#history-page")).to_have_text("Page 1")

    # Sign out: the key leaves the tab.
    page.click("#sign-out")
    expect(page.locator("#signin")).to_be_visible()
    assert page.evaluate("sessionStorage.getItem('mochi.apiKey')") is None

    # Another tenant sees neither job, nor any prompt of alice's.
    sign_in(page, bob)
    expect(page.locator("#history-empty")).to_be_visible()
    expect(items).to_have_count(0)
    body = page.inner_text("body")
    assert first_prompt not in body and second_prompt not in body
    shot(page, "09-other-tenant")
    context.close()

    # A phone-sized screen: one column, nothing wider than the screen.
    phone = browser.new_context(viewport={"width": 390, "height": 844}, is_mobile=True, has_touch=True)
    page = phone.new_page()
    watch(page)
    sign_in(page, alice)
    page.click(".history-item >> nth=0")
    expect(page.locator("#job")).to_be_visible()
    overflow = page.evaluate("document.documentElement.scrollWidth - window.innerWidth")
    assert overflow <= 0, f"the page is {overflow} px wider than a phone's screen"
    shot(page, "10-phone")
    check_accessibility(page, "the page on a phone")
    phone.close()


def main():
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        print(f"browser: chromium {browser.version}", flush=True)
        started = time.monotonic()
        if TINY:
            tiny_walk(browser)
        else:
            full_walk(browser)
        browser.close()
    assert not problems, "the page logged errors:\n" + "\n".join(problems)
    # The only refusals are the ones the walk provoked: the wrong key, the bad field.
    expected = {(401, "GET", "/v1/videos"), (422, "POST", "/v1/videos"), (422, "POST", "/v1/videos/estimate")}
    unexpected = [r for r in refusals if r not in expected]
    assert not unexpected, f"unexpected refusals: {unexpected}"
    print(f"refusals, all provoked: {sorted(set(refusals))}", flush=True)
    print(f"all checks passed in {time.monotonic() - started:.1f} s", flush=True)


main()
