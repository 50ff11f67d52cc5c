#!/usr/bin/python3
"""Drives the holdfast web console in headless Chromium (selenium + /usr/bin/chromedriver)
against a real daemon; run by tests/console.rs, which starts the daemon with camsim cameras and
checks this script's exit status and its `ok <step>` lines.

Phase `main`: the NL/EN key sets are equal and zonedToUtc handles DST gaps and folds; a
caretaker signs in (the token field is cleared; no token in localStorage/sessionStorage; the
session cookie is not readable by script), sees only site A, views a clip (currentTime
advances, a seek to a later time works and playback continues), exports with a reason and gets
a receipt whose SHA-256 equals the downloaded file's; a technician has no export button and a
forged export POST from the page (with its CSRF token) gets 403; a privacy officer finds what
is still there for a data-subject request; a manager places and releases a hold, signs off the
caretaker's export entry and queries key tags; every screen in Dutch and English without a
missing string (no `⟦`), reflowing at 200% zoom, with screenshots. Phase `tampered`: the
logbook screen is red and names the first bad seq.

Usage: browser.py PHASE --base URL --out DIR --downloads DIR [--bad-seq N]
Tokens come in the environment (HOLDFAST_CONSOLE_TOKENS, a JSON object by user name), not on
the command line. Prints a JSON line `state {...}` with what the Rust side checks afterwards.
"""

import argparse
import base64
import hashlib
import json
import os
import sys
import time
import traceback

from selenium import webdriver
from selenium.common.exceptions import TimeoutException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import Select, WebDriverWait

MISSING = "\u27e6"  # ⟦, what t() returns around a missing key


class Failed(Exception):
    pass


def check(cond, what):
    if not cond:
        raise Failed(what)


class Console:
    def __init__(self, base, out, downloads):
        self.base = base.rstrip("/")
        self.out = out
        self.downloads = downloads
        opts = webdriver.ChromeOptions()
        opts.binary_location = "/usr/bin/chromium"
        for a in [
            "--headless=new",
            "--no-sandbox",
            "--disable-dev-shm-usage",
            "--disable-gpu",
            "--window-size=1280,900",
            "--autoplay-policy=no-user-gesture-required",
            "--no-first-run",
            "--disable-extensions",
        ]:
            opts.add_argument(a)
        opts.add_experimental_option(
            "prefs",
            {
                "download.default_directory": downloads,
                "download.prompt_for_download": False,
                "safebrowsing.enabled": False,
            },
        )
        opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
        self.d = webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=opts)
        self.d.set_script_timeout(60)
        self.d.execute_cdp_cmd(
            "Browser.setDownloadBehavior", {"behavior": "allow", "downloadPath": downloads}
        )

    def quit(self):
        self.d.quit()

    # --- helpers -----------------------------------------------------------------------------
    def js(self, script, *args):
        return self.d.execute_script(script, *args)

    def js_async(self, script, *args):
        return self.d.execute_async_script(script, *args)

    def wait(self, cond, what, timeout=20):
        try:
            return WebDriverWait(self.d, timeout, poll_frequency=0.1).until(lambda d: cond())
        except TimeoutException:
            raise Failed(f"timed out waiting for {what}")

    def css(self, sel):
        return self.d.find_elements(By.CSS_SELECTOR, sel)

    def one(self, sel, timeout=20):
        return self.wait(lambda: (self.css(sel) or [None])[0], sel, timeout)

    def go(self, hash_):
        self.js("location.hash = arguments[0]", hash_)

    def shot(self, name):
        """A PNG of the whole page (not only the window) in the artifacts dir."""
        path = os.path.join(self.out, f"{name}.png")
        height = self.js("return Math.max(document.documentElement.scrollHeight, 900)")
        self.d.execute_cdp_cmd(
            "Emulation.setDeviceMetricsOverride",
            {"width": 1280, "height": min(int(height), 6000), "deviceScaleFactor": 1, "mobile": False},
        )
        try:
            png = self.d.execute_cdp_cmd("Page.captureScreenshot", {"format": "png", "captureBeyondViewport": True})
            with open(path, "wb") as f:
                f.write(base64.b64decode(png["data"]))
        finally:
            self.d.execute_cdp_cmd("Emulation.clearDeviceMetricsOverride", {})
        return path

    def settle(self):
        """Waits until no fetch is pending and the screen has rendered (cheap heuristic: the
        document is complete and nothing says 'pending' in the verify banner)."""
        time.sleep(0.3)
        self.wait(lambda: self.js("return document.readyState") == "complete", "page load")

    def lang(self):
        return self.js("return document.documentElement.lang")

    def set_lang(self, code):
        if self.lang() != code:
            self.one(f"#lang-{code}").click()
            self.wait(lambda: self.lang() == code, f"language {code}")
        self.settle()

    def no_missing(self, where):
        found = self.js(
            """
            const bad = [];
            const m = arguments[0];
            if (document.body.innerText.includes(m)) bad.push('text: ' + document.body.innerText.split('\\n').filter(l => l.includes(m)).join(' | '));
            for (const el of document.querySelectorAll('*')) {
              for (const a of ['title', 'aria-label', 'placeholder', 'value']) {
                const v = el.getAttribute(a);
                if (v && v.includes(m)) bad.push(a + ': ' + v);
              }
            }
            if (document.title.includes(m)) bad.push('title: ' + document.title);
            return bad;
            """,
            MISSING,
        )
        check(not found, f"missing strings on {where} ({self.lang()}): {found}")

    def both_langs(self, name, ready):
        """Checks and screenshots the current screen in Dutch and in English (ends in Dutch),
        and that it reflows at 200% zoom."""
        for code in ("en", "nl"):
            self.set_lang(code)
            ready()
            self.no_missing(name)
            self.shot(f"{name}-{code}")
        self.zoom_200(name)

    def zoom_200(self, name):
        """At 200% zoom a 1280 px window is 640 CSS px wide: the page must not scroll sideways
        (wide tables scroll inside their own box)."""
        self.d.execute_cdp_cmd(
            "Emulation.setDeviceMetricsOverride",
            {"width": 640, "height": 900, "deviceScaleFactor": 2, "mobile": False},
        )
        try:
            time.sleep(0.2)
            wide = self.js(
                "return [document.documentElement.scrollWidth, document.documentElement.clientWidth,"
                " [...document.querySelectorAll('body *')].filter(e => { const r = e.getBoundingClientRect();"
                " return r.right > document.documentElement.clientWidth + 1 && !e.closest('.table-wrap'); })"
                ".slice(0, 5).map(e => e.tagName + '.' + e.className + '#' + e.id)]"
            )
            check(wide[0] <= wide[1] + 1, f"{name} scrolls sideways at 200% zoom: {wide}")
            png = self.d.execute_cdp_cmd("Page.captureScreenshot", {"format": "png"})
            with open(os.path.join(self.out, f"{name}-nl-200pct.png"), "wb") as f:
                f.write(base64.b64decode(png["data"]))
        finally:
            self.d.execute_cdp_cmd("Emulation.clearDeviceMetricsOverride", {})

    def set_value(self, el, value):
        self.js(
            "arguments[0].value = arguments[1];"
            "arguments[0].dispatchEvent(new Event('input', {bubbles: true}));"
            "arguments[0].dispatchEvent(new Event('change', {bubbles: true}));",
            el,
            value,
        )

    def fill(self, form_sel, name, value):
        el = self.one(f'{form_sel} [name="{name}"]')
        el.clear()
        el.send_keys(value)

    def sign_in(self, user, token):
        self.d.get(self.base + "/")
        tok = self.one("#token")
        tok.send_keys(token)
        self.one("#sign-in button[type=submit]").click()
        self.wait(lambda: self.css("#who-user"), f"{user} signed in")
        check(self.one("#who-user").text == user, f"signed in as {user}")
        # The token field was cleared (and the form is gone).
        left = self.js("const t = document.getElementById('token'); return t ? t.value : '';")
        check(left == "", "the token field is cleared after sign-in")
        self.no_token_stored(token)

    def no_token_stored(self, token):
        stored = self.js(
            """
            const out = [];
            for (const s of [localStorage, sessionStorage]) {
              for (let i = 0; i < s.length; i++) { const k = s.key(i); out.push(k + '=' + s.getItem(k)); }
            }
            return {stored: out, cookie: document.cookie};
            """
        )
        for kv in stored["stored"]:
            check(token not in kv, f"token in web storage: {kv.split('=')[0]}")
        check(
            stored["stored"] == [] or all(kv.startswith("holdfast.lang=") for kv in stored["stored"]),
            f"only the language in web storage: {stored['stored']}",
        )
        check("holdfast_session" not in stored["cookie"], "the session cookie is readable by script")
        check(token not in stored["cookie"], "token in document.cookie")

    def sign_out(self):
        self.one("#sign-out").click()
        self.wait(lambda: self.css("#token"), "the sign-in form after sign-out")

    def browser_errors(self):
        """Severe console messages other than expected API refusals (4xx answers)."""
        out = []
        for e in self.d.get_log("browser"):
            msg = e.get("message", "")
            if e.get("level") != "SEVERE":
                continue
            if "status of 4" in msg:  # refusals the test provokes (403, 404, 401 before sign-in)
                continue
            out.append(msg)
        return out


def ok(step, **info):
    extra = (" " + json.dumps(info, sort_keys=True)) if info else ""
    print(f"ok {step}{extra}", flush=True)


# --- steps -----------------------------------------------------------------------------------


def page_checks(c):
    c.d.get(c.base + "/")
    c.one("#token")
    res = c.js_async(
        """
        const done = arguments[arguments.length - 1];
        Promise.all([import('/console/i18n/nl.js'), import('/console/i18n/en.js'), import('/console/time.js')])
          .then(([nl, en, tm]) => {
            const a = Object.keys(nl.default).sort(), b = Object.keys(en.default).sort();
            const onlyNl = a.filter(k => !b.includes(k)), onlyEn = b.filter(k => !a.includes(k));
            const z = (d, t, tz) => { const r = tm.resolveZoned(d, t, tz); return [r.date.toISOString(), r.kind]; };
            done({
              keys: a.length, onlyNl, onlyEn,
              empty: a.filter(k => !nl.default[k] || !en.default[k]),
              plain: z('2026-11-22', '21:00', 'Europe/Amsterdam'),
              summer: z('2026-07-01', '00:00', 'Europe/Amsterdam'),
              gap: z('2026-03-29', '02:30', 'Europe/Amsterdam'),
              fold: z('2026-10-25', '02:30', 'Europe/Amsterdam'),
              foldEnd: z('2026-10-25', '03:00', 'Europe/Amsterdam'),
              nyGap: z('2026-03-08', '02:30', 'America/New_York'),
              nyFold: z('2026-11-01', '01:30', 'America/New_York'),
              back: tm.utcToZoned('2026-10-25T01:30:00Z', 'Europe/Amsterdam'),
              day23: (b => (b[1] - b[0]) / 3600000)(tm.dayBounds('2026-03-29', 'Europe/Amsterdam')),
              day25: (b => (b[1] - b[0]) / 3600000)(tm.dayBounds('2026-10-25', 'Europe/Amsterdam')),
            });
          }).catch(e => done({error: String(e)}));
        """
    )
    check("error" not in res, f"modules load: {res}")
    check(res["onlyNl"] == [] and res["onlyEn"] == [], f"nl/en key sets differ: {res}")
    check(res["empty"] == [], f"empty strings: {res['empty']}")
    expect = {
        "plain": ["2026-11-22T20:00:00.000Z", "ok"],
        "summer": ["2026-06-30T22:00:00.000Z", "ok"],
        "gap": ["2026-03-29T01:30:00.000Z", "gap"],
        "fold": ["2026-10-25T00:30:00.000Z", "fold"],
        "foldEnd": ["2026-10-25T02:00:00.000Z", "ok"],
        "nyGap": ["2026-03-08T07:30:00.000Z", "gap"],
        "nyFold": ["2026-11-01T05:30:00.000Z", "fold"],
    }
    for k, v in expect.items():
        check(res[k] == v, f"zonedToUtc {k}: {res[k]} != {v}")
    check(res["back"] == {"date": "2026-10-25", "time": "02:30:00"}, f"utcToZoned: {res['back']}")
    check(res["day23"] == 23 and res["day25"] == 25, f"DST day lengths: {res['day23']} {res['day25']}")
    ok("i18n-keys-equal", keys=res["keys"])
    ok("zoned-time")
    c.both_langs("sign-in", lambda: c.one("#token"))


def caretaker(c, token, state):
    c.sign_in("caretaker", token)
    c.one("#screen-cameras table")
    sites = c.js("return [...document.querySelectorAll('[data-site]')].map(s => s.dataset.site)")
    cams = c.js("return [...document.querySelectorAll('[data-camera]')].map(s => s.dataset.camera)")
    check(sites == ["site-a"], f"caretaker sees only site A: {sites}")
    check(sorted(cams) == ["a1", "a2", "a3"], f"caretaker's cameras: {cams}")
    # a3 has no camera behind it: it is down, marked by colour and by text.
    c.wait(lambda: c.css('tr.row-down[data-camera="a3"]'), "camera a3 shown as down", 30)
    down = c.js(
        """
        const row = document.querySelector('tr[data-camera="a3"]'), up = document.querySelector('tr[data-camera="a1"]');
        const st = row.querySelector('.state');
        return {text: st.innerText, bg: getComputedStyle(row).backgroundColor, upBg: getComputedStyle(up).backgroundColor,
                badge: getComputedStyle(st).backgroundColor, upBadge: getComputedStyle(up.querySelector('.state')).backgroundColor,
                upText: up.querySelector('.state').innerText};
        """
    )
    check("UITGEVALLEN" in down["text"], f"down by text: {down}")
    check(down["bg"] != down["upBg"] and down["badge"] != down["upBadge"], f"down by colour: {down}")
    check("Neemt op" in down["upText"], f"a1 recording: {down}")
    nav = c.js("return [...document.querySelectorAll('#top nav a')].map(a => a.dataset.screen)")
    check("logbook" not in nav and "keytags" not in nav, f"caretaker nav: {nav}")
    ok("caretaker-site-a-only", sites=sites, cameras=sorted(cams), nav=nav)
    ok("down-camera-stands-out", state=down["text"])
    c.both_langs("cameras", lambda: c.one("#screen-cameras table"))

    # Recordings of a1 and the day timeline.
    c.go("#/recordings/a1")
    c.one("#range-form")
    c.one(".tl-rec")
    c.both_langs("recordings", lambda: c.one("#range-form"))
    # The last 20 s recorded.
    last = c.js(
        "const rows = document.querySelectorAll('table.intervals tbody tr'); return rows.length;"
    )
    check(last >= 1, "an interval recorded on a1")
    c.one("#range-view").click()
    c.one("#view-form")
    Select(c.one('#view-form [name="purpose"]')).select_by_value("incident")
    c.fill("#view-form", "reason", "console test: resident reports a broken door")
    c.one("#view-submit").click()
    video = c.one("#player")
    c.wait(lambda: c.js("return arguments[0].readyState", video) >= 1, "video metadata")
    duration = c.js("return arguments[0].duration", video)
    check(duration and duration > 6, f"clip duration {duration}")
    c.js_async(
        "const v = arguments[0], done = arguments[arguments.length - 1];"
        "v.play().then(() => done(true)).catch(e => done(String(e)));",
        video,
    )
    c.wait(lambda: c.js("return arguments[0].currentTime", video) > 1.0, "currentTime advances", 30)
    t1 = c.js("return arguments[0].currentTime", video)
    target = duration * 0.6
    c.js("arguments[0].currentTime = arguments[1]", video, target)
    c.wait(
        lambda: c.js("return arguments[0].currentTime", video) > target + 1.0,
        "playback continues after the seek",
        30,
    )
    t2 = c.js("return arguments[0].currentTime", video)
    err = c.js("return arguments[0].error && arguments[0].error.message", video)
    check(not err, f"video error: {err}")
    ok("view-plays-and-seeks", duration=round(duration, 2), before_seek=round(t1, 2), after_seek=round(t2, 2))
    c.js("arguments[0].pause()", video)
    c.no_missing("view player")
    c.shot(f"view-player-{c.lang()}")

    # Export the same range with a reason.
    c.go("#/recordings/a1")
    c.one("#range-form")
    c.one("#range-export").click()
    c.one("#export-form")
    Select(c.one('#export-form [name="purpose"]')).select_by_value("incident")
    c.fill("#export-form", "reason", "console test: copy for the incident file")
    c.one("#export-submit").click()
    link = c.one("#export-download", 60)
    c.no_missing("export result")
    c.shot(f"export-done-{c.lang()}")
    file_name = link.get_attribute("download")
    href = link.get_attribute("href")
    check("export=" in href, f"download link {href}")
    link.click()
    path = os.path.join(c.downloads, file_name)

    def downloaded():
        return os.path.exists(path) and not os.path.exists(path + ".crdownload")

    c.wait(downloaded, f"download of {file_name}", 60)
    time.sleep(0.3)
    digest = hashlib.sha256(open(path, "rb").read()).hexdigest()
    size = os.path.getsize(path)
    c.one("#receipt-link").click()
    shown = c.one("#receipt-sha256").text.strip()
    check(shown == digest, f"receipt SHA-256 {shown} != downloaded file's {digest}")
    seq = int(c.one("#receipt-seq").text.strip())
    export_id = c.js("return location.hash.split('/')[2]")
    state["export_seq"] = seq
    state["export_sha256"] = digest
    state["export_size"] = size
    state["export_file"] = file_name
    ok("export-receipt-matches-download", sha256=digest, size=size, seq=seq)
    c.both_langs("receipt", lambda: c.one("#receipt-sha256"))
    # Printed: no header, no buttons, the signature lines kept; a PDF of it as an artifact.
    c.d.execute_cdp_cmd("Emulation.setEmulatedMedia", {"media": "print"})
    try:
        printed = c.js(
            "return {top: getComputedStyle(document.getElementById('top')).display,"
            " button: document.getElementById('receipt-print').getClientRects().length ? 'shown' : 'none',"
            " lines: document.querySelectorAll('.signature .sig-line').length}"
        )
    finally:
        c.d.execute_cdp_cmd("Emulation.setEmulatedMedia", {"media": ""})
    check(printed["top"] == "none" and printed["button"] == "none", f"print CSS: {printed}")
    check(printed["lines"] == 8, f"signature lines for both parties: {printed}")
    pdf = c.d.execute_cdp_cmd("Page.printToPDF", {"printBackground": True})
    with open(os.path.join(c.out, "receipt-nl.pdf"), "wb") as f:
        f.write(base64.b64decode(pdf["data"]))
    ok("receipt-prints")
    # The receipt is reachable again (GET /api/v1/exports/{id}) after a reload of the page.
    c.d.get(f"{c.base}/#/receipt/{export_id}")
    check(c.one("#receipt-sha256").text.strip() == digest, "the receipt after a reload")
    ok("receipt-reachable-again")
    c.no_token_stored(token)
    c.sign_out()
    ok("caretaker-signed-out")


def technician(c, token):
    c.sign_in("technician", token)
    c.go("#/recordings/a1")
    c.one("#range-form")
    check(c.css("#range-view"), "the technician has a view button")
    check(not c.css("#range-export"), "the technician has no export button")
    c.one("#range-view").click()
    c.one("#view-form")
    opts = [o.get_attribute("value") for o in c.css('#view-form [name="purpose"] option')]
    check(opts == ["technical"], f"technician's purposes: {opts}")
    forged = c.js_async(
        """
        const done = arguments[arguments.length - 1];
        (async () => {
          const s = await (await fetch('/api/v1/session', {credentials: 'same-origin'})).json();
          const now = Date.now();
          const r = await fetch('/api/v1/cameras/a1/exports', {
            method: 'POST', credentials: 'same-origin',
            headers: {'Content-Type': 'application/json', 'X-CSRF-Token': s.csrf_token},
            body: JSON.stringify({from: new Date(now - 60000).toISOString(), to: new Date(now).toISOString(),
                                  purpose: 'incident', reason: 'forged'})});
          done({status: r.status, csrf: !!s.csrf_token, body: await r.text()});
        })().catch(e => done({error: String(e)}));
        """
    )
    check(forged.get("csrf") is True, f"the session has a CSRF token: {forged}")
    check(forged.get("status") == 403, f"forged export POST: {forged}")
    ok("technician-no-export", forged_status=forged["status"], purposes=opts)
    c.sign_out()


def privacy(c, token):
    c.sign_in("privacy", token)
    c.go("#/subject")
    form = c.one("#subject-form")
    now = c.js(
        "const tz = 'Europe/Amsterdam'; const f = new Intl.DateTimeFormat('en-CA', {timeZone: tz,"
        " year: 'numeric', month: '2-digit', day: '2-digit', hour: '2-digit', minute: '2-digit', hourCycle: 'h23'});"
        " const p = {}; for (const x of f.formatToParts(new Date(Date.now() - 180000))) p[x.type] = x.value;"
        " return [p.year + '-' + p.month + '-' + p.day, p.hour + ':' + p.minute];"
    )
    c.set_value(c.one('#subject-form [name="date"]'), now[0])
    c.set_value(c.one('#subject-form [name="start"]'), now[1])
    Select(c.one('#subject-form [name="duration"]')).select_by_value("5")
    c.one("#subject-submit").click()
    c.one('#subject-result [data-camera="a1"]')
    text = c.one('#subject-result [data-camera="a1"]').text
    links = c.css('#subject-result [data-camera="a1"] a.button')
    check(links, f"subject-access export offered for a1: {text}")
    href = links[0].get_attribute("href")
    check("purpose=subject-access" in href, f"subject-access export link: {href}")
    ok("subject-request", window=c.one("#subject-window").text)
    c.both_langs("subject", lambda: c.one('#subject-form'))
    del form
    c.sign_out()


def manager(c, token, state):
    c.sign_in("manager", token)
    # Place a hold on a1 and release it.
    c.go("#/holds")
    c.one("#hold-form")
    c.both_langs("holds", lambda: c.one("#hold-form"))
    c.one("#hold-cam-a1").click()
    c.fill("#hold-form", "reason", "console test: vandalism at the entrance")
    c.fill("#hold-form", "reference", "PL-CONSOLE-1")
    c.fill("#hold-form", "requested_by", "police Rotterdam-Noord")
    # A review date a week from now (so that it can be extended at once).
    week = c.js("return new Date(Date.now() + 7 * 86400000).toLocaleDateString('en-CA', {timeZone: 'Europe/Amsterdam'})")
    c.set_value(c.one('#hold-form [name="expires_at"]'), week)
    c.one("#hold-submit").click()
    card = c.one("#holds-active [data-hold]")
    hold_id = card.get_attribute("data-hold")
    ok("hold-placed", hold=hold_id)
    # Extend its review date (the default: two weeks past the current one), with a reason.
    c.one(f"#hold-{hold_id} details summary").click()
    c.fill(f"#hold-{hold_id} .extend-form", "reason", "console test: the prosecutor asked for more time")
    c.one(f"#hold-{hold_id} .extend-form button[type=submit]").click()
    c.wait(lambda: c.css(f"#holds-active #hold-{hold_id} .extensions li"), "the extension listed")
    ok("hold-extended", hold=hold_id)
    c.one(f"#hold-{hold_id} details summary").click()
    c.fill(f"#hold-{hold_id} .release-form", "reason", "console test: police collected the export")
    c.one(f"#hold-{hold_id} .release-form button[type=submit]").click()
    c.one(f"#holds-released #hold-{hold_id}")
    check(not c.css(f"#holds-active #hold-{hold_id}"), "the released hold left the active list")
    ok("hold-released", hold=hold_id)
    c.shot(f"holds-released-{c.lang()}")

    # The logbook: green, the list, the caretaker's export entry, sign it off.
    c.go("#/logbook")
    c.wait(lambda: "verify-ok" in c.one("#verify-status").get_attribute("class"), "verify green")
    c.one("#logbook-list table")
    c.both_langs("logbook", lambda: c.one("#logbook-list table"))
    seq = state["export_seq"]
    c.go(f"#/logbook/{seq}")
    entry = c.one("#entry")
    check(entry.get_attribute("data-user") == "caretaker", "the export entry is the caretaker's")
    c.fill("#signoff-form", "note", "console test: reason and purpose fit the camera protocol")
    c.one("#signoff-submit").click()
    c.wait(
        lambda: c.js(
            "return [...document.querySelectorAll('#linked tr[data-action]')].some(r => r.dataset.action === 'signoff' && r.dataset.user === 'manager')"
        ),
        "the sign-off linked to the entry",
    )
    signoff = c.js(
        "return Number([...document.querySelectorAll('#linked tr[data-action=\"signoff\"]')].pop().dataset.seq)"
    )
    state["signoff_seq"] = signoff
    ok("signed-off", entry=seq, signoff=signoff)
    c.both_langs("logbook-entry", lambda: c.one("#linked"))
    # No sign-off form on one's own entry.
    c.go(f"#/logbook/{signoff}")
    c.one("#entry")
    c.wait(lambda: c.css("#finding-form"), "finding form on own entry")
    check(not c.css("#signoff-form"), "no sign-off form on one's own entry")
    ok("no-signoff-on-own-entry")

    # Key tags.
    c.go("#/keytags")
    c.one("#keytags-form")
    c.fill("#keytags-form", "tag", "04A1B2C3")
    c.fill("#keytags-form", "reason", "console test: resident reports a lost tag")
    c.one("#keytags-submit").click()
    c.one("#keytags-result .notice")
    ok("keytags-query")
    c.both_langs("keytags", lambda: c.one("#keytags-form"))

    # The rest of the screens in both languages: view and export forms, subject.
    c.go("#/cameras")
    c.one("#screen-cameras table")
    c.go("#/recordings/a1")
    c.one("#range-form")
    c.one("#range-view").click()
    c.both_langs("view", lambda: c.one("#view-form"))
    c.go("#/recordings/a1")
    c.one("#range-form")
    c.one("#range-export").click()
    c.both_langs("export", lambda: c.one("#export-form"))
    c.go("#/subject")
    c.one("#subject-form")
    c.sign_out()


def tampered(c, token, bad_seq):
    c.sign_in("manager", token)
    c.go("#/logbook")
    c.wait(lambda: "verify-bad" in c.one("#verify-status").get_attribute("class"), "verify red", 60)
    shown = c.one("#verify-status").get_attribute("data-first-bad-seq")
    check(shown == str(bad_seq), f"first bad seq shown {shown}, tampered {bad_seq}")
    ok("logbook-red", first_bad_seq=int(shown))
    c.both_langs("logbook-tampered", lambda: c.one("#verify-status.verify-bad"))
    c.sign_out()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("phase", choices=["main", "tampered"])
    ap.add_argument("--base", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--downloads", required=True)
    ap.add_argument("--bad-seq", type=int)
    args = ap.parse_args()
    tokens = json.loads(os.environ["HOLDFAST_CONSOLE_TOKENS"])
    os.makedirs(args.out, exist_ok=True)
    os.makedirs(args.downloads, exist_ok=True)
    c = Console(args.base, args.out, args.downloads)
    state = {}
    step = "start"
    try:
        if args.phase == "main":
            for step, fn in [
                ("page", lambda: page_checks(c)),
                ("caretaker", lambda: caretaker(c, tokens["caretaker"], state)),
                ("technician", lambda: technician(c, tokens["technician"])),
                ("privacy", lambda: privacy(c, tokens["privacy"])),
                ("manager", lambda: manager(c, tokens["manager"], state)),
            ]:
                fn()
        else:
            step = "tampered"
            tampered(c, tokens["manager"], args.bad_seq)
        errors = c.browser_errors()
        check(not errors, f"browser console errors: {errors}")
        ok("no-console-errors")
        print("state " + json.dumps(state), flush=True)
        return 0
    except Exception as e:  # noqa: BLE001 - any failure is reported with a screenshot
        print(f"FAIL in {step}: {e}", flush=True)
        traceback.print_exc()
        try:
            print("screenshot: " + c.shot(f"FAILED-{args.phase}-{step}"), flush=True)
            print("url: " + c.d.current_url, flush=True)
            print("page text: " + c.js("return document.body.innerText")[:3000], flush=True)
            for e2 in c.d.get_log("browser"):
                print("browser: " + json.dumps(e2), flush=True)
        except Exception:  # noqa: BLE001
            pass
        return 1
    finally:
        c.quit()


if __name__ == "__main__":
    sys.exit(main())
